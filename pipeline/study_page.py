"""The page of a study: its plots and the HTML (``study.html.j2``) around the statistics that
``pipeline.study_stats`` computes. Each plot shows what a conclusion rests on: every seed's
score (offset per seed, so equal scores stay visible), each contrast's paired differences with
their interval, and each cell's test top-1 after every epoch (when the cells recorded it)."""

from __future__ import annotations

from pathlib import Path

from pipeline.report_charts import png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(study: dict) -> str:
    """Top-1 per seed for each method (a line joins a seed's cells, each seed a little offset),
    mean and 95% interval."""
    plt = _pyplot()
    summary = study["summary"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(summary)), 3.8))
    labels = [f"{r['loss']}\nb{r['batch_size']}" for r in summary]
    seeds = sorted({s for r in summary for s in r["seeds"]})
    cmap = plt.get_cmap("tab10")
    for k, seed in enumerate(seeds):
        offset = 0.05 * (k - (len(seeds) - 1) / 2)  # two seeds with one score must not hide each other
        xs = [i for i, r in enumerate(summary) if seed in r["seeds"]]
        ys = [summary[i]["scores"][summary[i]["seeds"].index(seed)] for i in xs]
        ax.plot([x + offset for x in xs], ys, marker="o", linestyle=":", linewidth=0.8, alpha=0.7,
                color=cmap(k % 10), label=f"seed {seed}")
    for i, r in enumerate(summary):
        lo, hi = r["ci95"] or (r["mean"], r["mean"])
        ax.errorbar([i + 0.3], [r["mean"]], yerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="s", color="black",
                    capsize=4, label="mean, 95% CI" if i == 0 else None)
    ax.axhline(study["teacher_top1"], color="tab:red", linewidth=1, linestyle="--", label="teacher")
    ax.set_xticks(range(len(summary)), labels)
    ax.set_xlim(-0.5, len(summary) - 0.2)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{study['study']['name']}: {study['study']['student']} from {study['study']['teacher']}")
    ax.legend(fontsize=7, loc="best")
    return png(fig)


def _comparisons(study: dict) -> list[dict]:
    """What the conclusions rest on: the named contrasts, else every loss against the reference."""
    return study.get("contrasts") or study.get("paired") or []


def _plot_differences(study: dict) -> str | None:
    """Each comparison's paired differences, one dot per seed, with the mean and its 95% t-interval."""
    rows = _comparisons(study)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.75 * len(rows) + 1.2))
    cmap = plt.get_cmap("tab10")
    for y, r in enumerate(reversed(rows)):
        for diff, seed in zip(r["diffs"], r["seeds"], strict=True):
            ax.plot([diff], [y + 0.12], "o", color=cmap(seed % 10), alpha=0.8, markersize=5)
        if r["ci95"]:
            ax.errorbar([r["mean_diff"]], [y - 0.12], xerr=[[r["mean_diff"] - r["ci95"][0]], [r["ci95"][1] - r["mean_diff"]]],
                        fmt="s", color="black", capsize=4)
        else:
            ax.plot([r["mean_diff"]], [y - 0.12], "s", color="black")
    ax.axvline(0, color="tab:red", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(rows)), [f"{r['loss']} - {r['reference']}" + (f" (b{r['batch_size']})"
                                     if len({x['batch_size'] for x in rows}) > 1 else "") for r in reversed(rows)])
    ax.set_xlabel("paired difference in test top-1 (points); dots: seeds (colour = seed), square: mean, 95% t-interval")
    ax.set_title("What each comparison rests on")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def _plot_curves(study: dict) -> str | None:
    """Every cell's test top-1 after each epoch, coloured by loss (cells that recorded it)."""
    cells = [c for c in study["cells"] if c.get("curve")]
    if not cells:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours: dict[str, str] = {}
    for cell in cells:
        colour = colours.setdefault(cell["loss"], f"C{len(colours)}")
        ax.plot(range(1, len(cell["curve"]) + 1), cell["curve"], color=colour, alpha=0.6, marker="o", markersize=2.5,
                linewidth=1, label=cell["loss"] if cell["loss"] not in {c["loss"] for c in cells[:cells.index(cell)]}
                else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%) after the epoch")
    ax.set_title(f"{study['study']['name']}: every cell, one line per seed")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png(fig)


def plots(study: dict) -> dict[str, str | None]:
    return {"plot": _plot(study), "differences": _plot_differences(study), "curves": _plot_curves(study)}


def render_html(study: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["j2"]))
    return env.get_template("study.html.j2").render(study=study, **plots(study))
