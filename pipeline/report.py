"""Run reports: ``report.json`` (everything, machine-readable) and a self-contained
``report.html`` (summary, accuracy-versus-latency, per-class deltas, training
curves, gate verdicts) that opens offline: charts are inline PNGs."""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from pathlib import Path

from pipeline.core.environment import environment
from pipeline.core.manifest import Manifest
from pipeline.core.store import Artifact

_ORDER = {"teacher": 0, "student": 1, "onnx": 2}


def _curves(artifact: Artifact | None) -> list[dict]:
    path = artifact.file("metrics.jsonl") if artifact is not None else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fastest_passing(latency: dict, gate: dict) -> dict[str, dict]:
    """Per batch size (as a string key): the lowest-p50 back-end whose accuracy rule passed."""
    failed = {r["target"] for r in gate["rules"] if r.get("target") and not r["passed"]}
    best: dict[str, dict] = {}
    for cell in latency["results"]:
        key = str(cell["batch"])
        if cell["backend"] not in failed and (key not in best or cell["p50_ms"] < best[key]["p50_ms"]):
            best[key] = {"backend": cell["backend"], "p50_ms": cell["p50_ms"]}
    return best


def build_report(manifest: Manifest, artifacts: dict[str, Artifact]) -> dict:
    validate = artifacts["validate"].metrics
    distill = artifacts["distill"].metrics
    data = {**artifacts["validate"].record.get("data", {}), "train": distill.get("train_samples"),
            "val": distill.get("val_samples"), "test": validate["samples"]}
    return {
        "name": manifest.name,
        "environment": environment(),
        "data": data,
        "splits": {"training": "train (minus val)", "early_stopping_and_calibration": "val (from train)",
                   "metrics": validate["split"]},
        "artifacts": {kind: art.id for kind, art in artifacts.items()},
        "metrics": validate,
        "latency": artifacts["latency"].metrics if "latency" in artifacts else None,
        "fastest": (fastest_passing(artifacts["latency"].metrics, artifacts["gate"].metrics)
                    if "latency" in artifacts else None),
        "quantization": artifacts["quantize"].metrics if "quantize" in artifacts else None,
        "gate": artifacts["gate"].metrics,
        "training": {"teacher": _curves(artifacts.get("teacher")), "student": _curves(artifacts.get("distill"))},
        "manifest": manifest.model_dump(mode="json", by_alias=True),
    }


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _charts(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    models = report["metrics"]["models"]
    latency = report["latency"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if latency:
        batch = max(r["batch"] for r in latency["results"])
        names = {"pytorch-eager": "student"}
        for r in (r for r in latency["results"] if r["batch"] == batch):
            top1 = models[names.get(r["backend"], r["backend"])]["top1"]
            ax.scatter(r["p50_ms"], top1, s=60)
            ax.annotate(r["backend"], (r["p50_ms"], top1), textcoords="offset points", xytext=(5, 5))
        ax.axhline(models["teacher"]["top1"], color="grey", linestyle="--", label="teacher")
        ax.set_xlabel(f"p50 latency at batch {batch} (ms, CPU)")
        ax.legend()
    else:
        names = list(models)
        ax.bar(names, [models[n]["top1"] for n in names], color="tab:blue")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs latency" if latency else "accuracy")
    charts["accuracy"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    student, teacher = models["student"]["per_class"], models["teacher"]["per_class"]
    deltas = [(s - t) if s is not None and t is not None else 0.0 for s, t in zip(student, teacher, strict=True)]
    ax.bar(range(len(deltas)), deltas, color=["tab:red" if d < 0 else "tab:green" for d in deltas])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("student - teacher top-1 (points)")
    ax.set_title("per-class delta")
    charts["per_class"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for who, rows in report["training"].items():
        if rows:
            ax.plot([r["epoch"] for r in rows], [r["val_top1"] for r in rows], marker="o", label=f"{who} val top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("training curves (val split)")
    ax.legend()
    charts["training"] = _png(fig)
    plt.close(fig)
    return charts


def render_html(report: dict) -> str:
    esc = html.escape
    m = report["metrics"]
    gate = report["gate"]
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{v['top1']:.2f}</td><td>{v['top5']:.2f}</td><td>{v['teacher_agreement']:.2f}</td>"
        f"<td>{v['flip_rate']:.2f}</td><td>{v['max_logit_diff']:.2e}</td></tr>" for name, v in sorted(m["models"].items(), key=lambda kv: _ORDER.get(kv[0], 9)))
    verdicts = "".join(
        f"<tr class='{'pass' if r['passed'] else 'fail'}'><td>{esc(r['rule'])}</td><td>{r['measured']:.2f}</td>"
        f"<td>{'&le;' if r.get('direction') == 'at_most' else '&ge;'} {r['threshold']:.2f}</td>"
        f"<td>{'PASS' if r['passed'] else 'FAIL'}</td></tr>" for r in gate["rules"])
    ci = m["student_vs_teacher"]["bootstrap"]
    mc = m["student_vs_teacher"]["mcnemar"]
    charts = "".join(f"<figure><img alt='{k}' src='data:image/png;base64,{v}'></figure>"
                     for k, v in _charts(report).items())
    status = "PASS: shipped" if gate["passed"] else "FAIL: nothing shipped"
    fastest = ("<p>Fastest artifact within its accuracy budget: " + "; ".join(
        f"batch {batch}: <b>{esc(cell['backend'])}</b> ({cell['p50_ms']:.3f} ms p50)"
        for batch, cell in report["fastest"].items()) + ".</p>") if report.get("fastest") else ""
    env = report["environment"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(report['name'])}: cskd-pipeline report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.pass td:last-child {{ color: #1a7f37; font-weight: bold; }} .fail td:last-child {{ color: #c62828; font-weight: bold; }}
.status {{ font-size: 1.3em; font-weight: bold; color: {'#1a7f37' if gate['passed'] else '#c62828'}; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 520px; }}
</style></head><body>
<h1>{esc(report['name'])}</h1>
<p class="status">Gate: {status}</p>
<p>Test split: {m['samples']} samples of {esc(report['data']['name'])}. Student - teacher top-1: {ci['difference']:+.2f} points,
{ci['confidence']:.0%} paired-bootstrap CI [{ci['ci_low']:+.2f}, {ci['ci_high']:+.2f}]; McNemar p = {mc['p_value']:.3g}
(student right only: {mc['only_a']}, teacher right only: {mc['only_b']}).</p>
{fastest}<h2>Models</h2>
<table><tr><th>model</th><th>top-1</th><th>top-5</th><th>agrees with teacher %</th><th>flip rate vs student %</th><th>max |logit diff|</th></tr>{rows}</table>
<h2>Gate</h2>
<table><tr><th>rule</th><th>measured</th><th>threshold</th><th>verdict</th></tr>{verdicts}</table>
<h2>Charts</h2>{charts}
<h2>Environment</h2><p>{esc(', '.join(f'{k} {v}' for k, v in env.items() if v))}</p>
</body></html>
"""


def write_report(manifest: Manifest, artifacts: dict[str, Artifact], folder: Path, *, run: dict,
                 log: Path | None = None) -> Path:
    """Write report.json, report.html and run.log into ``<folder>/runs/<run id>/`` (``folder`` is
    ``<report.dir>/<name>``, made and marked by the pipeline) and point ``latest`` at it."""
    from pipeline.history import write_run

    report = {**build_report(manifest, artifacts), "run": run}

    def fill(tmp: Path) -> None:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.html").write_text(render_html(report))
        if log is not None and log.is_file():
            shutil.copyfile(log, tmp / "run.log")

    marker = {"manifest": manifest.name, "what": "run report", "gate_artifact": artifacts["gate"].id}
    return write_run(folder, run["id"], fill, marker=marker)
