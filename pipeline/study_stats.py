"""The statistics and the page of a study (``pipeline.study``).

Per loss and batch size: mean, sample standard deviation and a 95% Student-t interval (clipped
to [0, 100]: top-1 is bounded)
of test top-1 over seeds. Per loss against the reference: the paired differences by
seed (same data order, same initialisation), their mean, a 95% t-interval, whether it
excludes 0, and the sign test (wins, losses, ties; two-sided exact binomial p on the
non-tied pairs). scipy computes the t quantiles and the binomial test.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
from pathlib import Path


def _t_interval(values: list[float], *, bounds: tuple[float, float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean, clipped to the metric's range (``bounds``): a top-1
    interval past 100% says nothing the clipped one does not, and reads as an error."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return (max(bounds[0], mean - half), min(bounds[1], mean + half))


def conclusion(paired: list[dict]) -> str:
    """One sentence: what the paired differences support, loss by loss."""
    if not paired:
        return "No loss was paired with the reference, so nothing is compared."
    parts = []
    for r in paired:
        name = f"{r['loss']}" + (f" (batch {r['batch_size']})" if len({p['batch_size'] for p in paired}) > 1 else "")
        if r["ci95"] is None:
            parts.append(f"{name}: one seed, no interval")
        elif r["excludes_zero"]:
            side = "above" if r["mean_diff"] > 0 else "below"
            parts.append(f"{name} is {abs(r['mean_diff']):.2f} points {side} {r['reference']} "
                         f"(interval [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] excludes 0, n = {r['n']})")
        else:
            parts.append(f"{name} cannot be told from {r['reference']} with these {r['n']} seeds "
                         f"(mean {r['mean_diff']:+.2f}, interval [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}])")
    return "What this data supports: " + "; ".join(parts) + "."


def summarize(rows: list[dict], *, reference: str) -> dict:
    """``{"summary": [...], "paired": [...]}`` from the cells' result rows."""
    from scipy import stats

    groups: dict[tuple[str, int], dict[int, float]] = {}
    for row in rows:
        groups.setdefault((row["loss"], row["batch_size"]), {})[row["seed"]] = row["student_top1"]
    summary = []
    for (loss, batch), by_seed in groups.items():
        scores = [by_seed[s] for s in sorted(by_seed)]
        summary.append({"loss": loss, "batch_size": batch, "n": len(scores), "seeds": sorted(by_seed),
                        "scores": scores, "mean": statistics.mean(scores),
                        "std": statistics.stdev(scores) if len(scores) > 1 else None,
                        "ci95": _t_interval(scores, bounds=(0.0, 100.0))})
    paired = []
    for (loss, batch), by_seed in groups.items():
        ref = groups.get((reference, batch))
        if loss == reference or ref is None:
            continue
        seeds = sorted(set(by_seed) & set(ref))
        diffs = [by_seed[s] - ref[s] for s in seeds]
        if not diffs:
            continue
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        ci = _t_interval(diffs, bounds=(-100.0, 100.0))
        paired.append({"loss": loss, "batch_size": batch, "reference": reference, "n": len(diffs), "seeds": seeds,
                       "diffs": diffs, "mean_diff": statistics.mean(diffs),
                       "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else None, "ci95": ci,
                       "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
                       "wins": wins, "losses": losses, "ties": len(diffs) - wins - losses,
                       "sign_p": stats.binomtest(wins, wins + losses).pvalue if wins + losses else None})
    return {"summary": summary, "paired": paired, "conclusion": conclusion(paired)}


def _plot(study: dict) -> str:
    """Top-1 per seed for each method (a line joins a seed's cells), mean and 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = study["summary"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(summary)), 3.8))
    labels = [f"{r['loss']}\nb{r['batch_size']}" for r in summary]
    seeds = sorted({s for r in summary for s in r["seeds"]})
    cmap = plt.get_cmap("tab10")
    for k, seed in enumerate(seeds):
        xs = [i for i, r in enumerate(summary) if seed in r["seeds"]]
        ys = [summary[i]["scores"][summary[i]["seeds"].index(seed)] for i in xs]
        ax.plot(xs, ys, marker="o", linestyle=":", linewidth=0.8, alpha=0.7, color=cmap(k % 10), label=f"seed {seed}")
    for i, r in enumerate(summary):
        lo, hi = r["ci95"] or (r["mean"], r["mean"])
        ax.errorbar([i + 0.18], [r["mean"]], yerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="s", color="black",
                    capsize=4, label="mean, 95% CI" if i == 0 else None)
    ax.axhline(study["teacher_top1"], color="tab:red", linewidth=1, linestyle="--", label="teacher")
    ax.set_xticks(range(len(summary)), labels)
    ax.set_xlim(-0.5, len(summary) - 0.5)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{study['study']['name']}: {study['study']['student']} from {study['study']['teacher']}")
    ax.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def render_html(study: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["j2"]))
    return env.get_template("study.html.j2").render(study=study, plot=_plot(study))
