"""The README's study table, written from a committed study.json so the two cannot disagree.

    python tools/study_table.py README.md        # rewrite every <!-- study-table: PATH --> block
    python tools/study_table.py docs/results.md  # and every <!-- study-decision: PATH --> block
    python tools/study_table.py --curves STORE docs/study-fashion-mnist.json docs/study-fashion-mnist-curves.png
    python tools/study_table.py --plot docs/study-fashion-mnist.json docs/study-fashion-mnist.png
    python tools/study_table.py --plots docs/study-cifar10-ablation.json docs/study-cifar10-ablation

A block is the lines between ``<!-- study-table: docs/x.json -->`` and ``<!-- /study-table -->``;
a test checks that each block is what this script writes from its JSON. ``--curves`` plots each
cell's per-epoch test top-1 (recorded with ``validate.paper_protocol: true``) from the study's
store, to show whether the students were near convergence.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- study-table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /study-table -->)", re.S)


def table(study: dict) -> str:
    """One row per loss: mean top-1 with its interval, and the paired difference against the reference."""
    paired = {(p["loss"], p["batch_size"]): p for p in study["paired"]}
    reference = study["study"]["reference"]
    lines = [f"| loss | seeds | mean top-1 | 95% interval | minus {reference}, paired by seed | 95% t-interval | "
             f"wins/losses | sign test p |", "|---|---|---|---|---|---|---|---|"]
    for row in study["summary"]:
        low, high = row["ci95"]
        p = paired.get((row["loss"], row["batch_size"]))
        versus = (f"{p['mean_diff']:+.2f} | [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] | {p['wins']}/{p['losses']} | "
                  f"{p['sign_p']:.3f}") if p else "(reference) | | |"
        lines.append(f"| {row['loss']} | {row['n']} | {row['mean']:.2f} | [{low:.2f}, {high:.2f}] | {versus} |")
    return "\n".join(lines) + "\n"


def decision_table(study: dict) -> str:
    """The results page's table: each arm's test top-1, the paired difference it rests on (against
    its control in a named ablation, else against the reference) with its interval and the seeds
    ahead, and the median training time of one cell."""
    import statistics

    against: dict[tuple[str, int], dict] = {}
    for comparison in study.get("contrasts") or study["paired"]:  # an arm's first contrast: against its control
        against.setdefault((comparison["loss"], comparison["batch_size"]), comparison)
    seconds: dict[tuple[str, int], list[float]] = {}
    for cell in study["cells"]:
        seconds.setdefault((cell["loss"], cell["batch_size"]), []).append(cell["train_wall_s"])
    lines = ["| arm | seeds | test top-1, mean [95% CI] | against | paired difference [95% t-interval] | "
             "seeds ahead | training s per cell (median) |", "|---|---|---|---|---|---|---|"]
    for row in study["summary"]:
        key = (row["loss"], row["batch_size"])
        low, high = row["ci95"] or (row["mean"], row["mean"])
        p = against.get(key)
        versus = ("(reference) | | " if p is None else
                  f"{p['reference']} | {p['mean_diff']:+.2f} "
                  + (f"[{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p["ci95"] else "(one pair)")
                  + f" | {p['wins']} of {p['n']}")
        lines.append(f"| {row['loss']} | {row['n']} | {row['mean']:.2f} [{low:.2f}, {high:.2f}] | {versus} | "
                     f"{statistics.median(seconds[key]):.0f} |")
    return "\n".join(lines) + "\n"


DECISION = re.compile(r"(<!-- study-decision: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /study-decision -->)", re.S)


def rewrite(page: Path) -> str:
    def fill(match: re.Match) -> str:
        study = json.loads((ROOT / match.group("path")).read_text())
        return match.group(1) + table(study) + match.group(4)

    def fill_decision(match: re.Match) -> str:
        study = json.loads((ROOT / match.group("path")).read_text())
        return match.group(1) + decision_table(study) + match.group(4)

    return DECISION.sub(fill_decision, BLOCK.sub(fill, page.read_text()))


def curves(store: Path, study_json: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = json.loads(study_json.read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {}
    for cell in study["cells"]:
        rows = [json.loads(line) for line in
                (store / "artifacts" / "distill" / cell["distill_id"] / "metrics.jsonl").read_text().splitlines()]
        colour = colours.setdefault(cell["loss"], f"C{len(colours)}")
        ax.plot([r["epoch"] for r in rows], [r["monitor_top1"] for r in rows], color=colour, alpha=0.7, marker="o",
                markersize=3, label=cell["loss"] if cell["seed"] == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), after each epoch")
    ax.set_title(f"{study['study']['name']}: every cell's test top-1 by epoch (one line per seed)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def plot(study_json: Path, out: Path) -> None:
    """The study page's plot (top-1 per seed, means and intervals) as a PNG file."""
    import base64

    sys.path.insert(0, str(ROOT))
    from pipeline.study_page import _plot

    out.write_bytes(base64.b64decode(_plot(json.loads(study_json.read_text()))))


def plots(study_json: Path, prefix: Path) -> list[Path]:
    """Every plot of the study page as PNG files: PREFIX.png (per seed), PREFIX-differences.png
    (each comparison's paired differences), PREFIX-curves.png (test top-1 by epoch, from the cells)."""
    import base64

    sys.path.insert(0, str(ROOT))
    from pipeline.study_page import plots as page_plots

    written = []
    for name, data in page_plots(json.loads(study_json.read_text())).items():
        if data is not None:
            out = prefix.with_name(prefix.name + ("" if name == "plot" else f"-{name}") + ".png")
            out.write_bytes(base64.b64decode(data))
            written.append(out)
    return written


if __name__ == "__main__":
    if sys.argv[1] == "--plot":
        plot(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "--plots":
        print("\n".join(str(p) for p in plots(Path(sys.argv[2]), Path(sys.argv[3]))))
    elif sys.argv[1] == "--curves":
        curves(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        page = Path(sys.argv[1])
        page.write_text(rewrite(page))
