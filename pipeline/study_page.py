"""The page of a study: the per-seed plot and the HTML (``study.html.j2``) around the statistics
that ``pipeline.study_stats`` computes."""

from __future__ import annotations

import base64
import io
from pathlib import Path


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
