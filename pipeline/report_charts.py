"""The charts of a run's report: accuracy against latency and each training's curves, as inline
PNGs (``pipeline.report`` puts them into the page)."""

from __future__ import annotations

import base64
import functools
import io
import json

from foundation.backends import TEACHER_ONNX


def png(fig) -> str:
    """The figure as a base64 PNG for an inline <img>; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def charts(report: dict) -> dict[str, str]:
    """The report's charts, drawn once per report: a run renders the same page twice (its report
    folder and its shipped bundle, which links files by their own names), and drawing is most of
    the cost of a small run's report (about 1 s for its three charts on a 2-core machine)."""
    drawn = {"metrics": {"models": report["metrics"]["models"]}, "latency": report["latency"],
             "training": report["training"]}  # all that _draw reads
    return dict(_drawn(json.dumps(drawn, sort_keys=True)))


# A process renders one run's pages in turn, and the same figures again for runs that differ only
# after training with no latency step (an edited gate or ship folder: a test suite's daily bread).
@functools.lru_cache(maxsize=16)
def _drawn(drawn: str) -> dict[str, str]:
    return _draw(json.loads(drawn))


def _draw(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter, LogLocator, NullFormatter, ScalarFormatter

    charts = {}
    models, latency = report["metrics"]["models"], report["latency"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    if latency:
        batch = max(r["batch"] for r in latency["results"])
        names = {"pytorch-eager": "student", "teacher-eager": "teacher", TEACHER_ONNX: "teacher"}  # whose top-1
        shown = {"pytorch-eager": "student (eager)", "teacher-eager": "teacher (eager)", TEACHER_ONNX: "teacher (onnx)"}
        points = [(shown.get(r["backend"], r["backend"]), r["p50_ms"], models[names.get(r["backend"], r["backend"])]["top1"])
                  for r in latency["results"] if r["batch"] == batch]
        markers = "osD^v<>Pp*hX"
        for n, (name, ms, top1) in enumerate(points):  # a legend, not labels beside the points: none overlap
            ax.scatter(ms, top1, s=70, marker=markers[n % len(markers)], label=f"{name}: {top1:.2f}%, {ms:.3g} ms",
                       alpha=0.85, color="black" if name.startswith("teacher") else None)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis collide
        ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        _honest_top1_axis(ax, [p[2] for p in points])
    else:
        ax.bar(list(models), [m["top1"] for m in models.values()], color="tab:blue")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs latency" if latency else "accuracy")
    charts["accuracy vs latency"] = png(fig)
    for who, rows in report["training"].items():
        if not rows:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
        skip = {"epoch", "lr", "val_top1", "monitor_top1", "mean_temperature", "frac_mask_b", "frac_mask_c", "loss"}
        for term in [k for k in rows[0] if k not in skip] + ["loss"]:
            left.plot([r["epoch"] for r in rows], [r[term] for r in rows], marker="o", label=term)
        if all(r[t] > 0 for r in rows for t in rows[0] if t not in skip or t == "loss"):
            left.set_yscale("log")  # the first epoch's loss is many times the rest: a linear axis flattens them
            # plain numbers ("1.95", not mathtext's 1.95x10^0): easier to read, and a quarter of the
            # time of drawing a report's charts went to parsing the mathtext labels
            left.yaxis.set_major_formatter(LogFormatter())  # matplotlib's choice of labels, in plain text
            left.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        left.set_xlabel("epoch")
        left.set_title(f"{who}: loss terms per epoch (train, log scale)")
        left.legend(fontsize=8)
        right.plot([r["epoch"] for r in rows], [r["val_top1"] for r in rows], marker="o", label="val top-1 (%)")
        if "monitor_top1" in rows[0]:
            right.plot([r["epoch"] for r in rows], [r["monitor_top1"] for r in rows], marker="^",
                       label="test top-1 (%), paper protocol")
            right.legend(fontsize=8)
        if "mean_temperature" in rows[0]:
            twin = right.twinx()
            twin.plot([r["epoch"] for r in rows], [r["mean_temperature"] for r in rows], color="tab:orange",
                      marker="s", label="mean CSWT temperature")
            twin.set_ylabel("mean CSWT temperature")
        right.set_xlabel("epoch")
        right.set_title(f"{who}: val top-1" + (" and CSWT temperature" if "mean_temperature" in rows[0] else ""))
        charts[f"{who} training"] = png(fig)
    return charts


def _honest_top1_axis(ax, values: list[float], *, span: float = 5.0) -> None:
    """A top-1 axis at least ``span`` points tall, within [0, 100]: 0.3 points between two models
    must not look like a cliff, and the axis says how tall it is."""
    low, high = min(values), max(values)
    pad = max(span - (high - low), 0) / 2 + 0.5
    bottom, top = max(0.0, low - pad), min(100.0, high + pad)
    ax.set_ylim(bottom, top)
    ax.text(0.01, 0.01, f"axis: {top - bottom:.1f} points", transform=ax.transAxes, fontsize=7, color="#666")
