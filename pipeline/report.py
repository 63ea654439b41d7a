"""Run reports: ``report.json`` (everything, machine-readable) and a self-contained
``report.html`` rendered from a Jinja2 template (``report.html.j2``): the compression
story (teacher against student: size, accuracy, latency), the full latency table
with warnings, confusion matrices, per-class accuracy with class names, training
curves of every loss term, the gate's verdicts, the manifest, the lineage and
links to the shipped files. Charts are inline PNGs, so the page opens offline."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

from exports.latency import within_noise
from pipeline.core.backends import NOT_SHIPPED, TEACHER_ONNX, backends, fastest_passing
from pipeline.core.environment import environment
from pipeline.core.manifest import Manifest
from pipeline.core.records import (
    BundleRecord,
    LatencyRecord,
    QuantizationRecord,
    ServingRecord,
    StudentRecord,
    TeacherRecord,
    ValidationRecord,
    VerdictRecord,
    find,
    metrics_of,
    need,
    training_curves,
)
from pipeline.core.store import Artifact


def fastest(latency: dict, gate: dict) -> dict[str, dict]:
    """Per batch size (as a string key): the lowest-p50 student artifact whose accuracy rules passed."""
    best = {}
    for batch in sorted({c["batch"] for c in latency["results"]}):
        cell = fastest_passing(latency["results"], gate["rules"], batch=batch)
        if cell is not None:
            failed = {r["target"] for r in gate["rules"] if r.get("target") and not r["passed"]}
            tied = [c["backend"] for c in latency["results"] if c["batch"] == batch and c is not cell
                    and c["backend"] not in (*NOT_SHIPPED, *failed) and within_noise(c, cell)]
            best[str(batch)] = {"backend": cell["backend"], "p50_ms": cell["p50_ms"], "within_noise": tied}
    return best


def latency_warnings(latency: dict) -> list[str]:
    """Cells a reader should not miss: a reduced-precision model slower than FP32, or a long tail."""
    cells = {(c["backend"], c["batch"]): c for c in latency["results"]}
    warnings = []
    for (backend, batch), cell in sorted(cells.items()):
        fp32 = cells.get(("onnx", batch))
        if fp32 and any(t in backend for t in ("int8", "fp16")) and cell["p50_ms"] > fp32["p50_ms"]:
            warnings.append(f"{backend} at batch {batch} is slower than FP32 ONNX "
                            f"({cell['p50_ms']:.3f} ms against {fp32['p50_ms']:.3f} ms p50)")
        if cell["p90_ms"] > 3 * cell["p50_ms"]:
            warnings.append(f"{backend} at batch {batch}: p90 {cell['p90_ms']:.3f} ms is over 3x its p50 "
                            f"({cell['p50_ms']:.3f} ms); the machine was busy or the runtime stalls")
    return warnings


def served(serving: dict) -> dict:
    """The serving stage's figures with each load level's share of the in-process throughput at
    the largest batch (the most the runtime does without HTTP) and p99 over p50."""
    in_process = serving["in_process"]
    batch = max(in_process, key=int) if in_process else None
    reference = in_process[batch]["throughput_ips"] if batch else None
    rows = [{**r, "share": r["throughput_rps"] / reference if reference else None,
             "tail": r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else None} for r in serving["rows"]]
    return {**serving, "rows": rows, "reference_batch": batch, "reference_ips": reference,
            "single_p50_ms": (in_process.get("1") or in_process.get(1) or {}).get("p50_ms")}


def _compression(artifacts: dict[str, Artifact], latency: dict | None) -> list[dict]:
    """Teacher against student: parameters, weights size, test top-1, eager latency per batch."""
    validation = need(artifacts, ValidationRecord).record
    rows = []
    for who, role, backend in (("teacher", TeacherRecord, "teacher-eager"), ("student", StudentRecord, "pytorch-eager")):
        trained = need(artifacts, role)
        cells = {c["batch"]: c for c in (latency or {"results": []})["results"] if c["backend"] == backend}
        rows.append({"model": who, "architecture": trained.artifact.record["config"]["model"],
                     "parameters": trained.record.parameters, "bytes": trained.file(role.WEIGHTS).stat().st_size,
                     "top1": getattr(validation, f"{who}_top1"), "latency": cells})
    teacher, student = rows
    student["size_ratio"] = (teacher["parameters"] / student["parameters"]
                             if teacher["parameters"] and student["parameters"] else None)
    student["speedup"] = {b: teacher["latency"][b]["p50_ms"] / c["p50_ms"]
                          for b, c in student["latency"].items() if b in teacher["latency"]}
    return rows


def _deployables(artifacts: dict[str, Artifact], latency: dict | None, gate: dict) -> list[dict]:
    """The report's first table: the teacher, then every exported file of the student as it ships
    (size on disk, test top-1 through its own runtime, p50 per batch size), with the ratios to the
    teacher, and whether its accuracy budget held (only those can be the fastest)."""
    validate = need(artifacts, ValidationRecord).record
    cells = {(c["backend"], c["batch"]): c for c in (latency or {"results": []})["results"]}
    batches = sorted({c["batch"] for c in (latency or {"results": []})["results"]})
    failed = {r.get("target") for r in gate.get("rules", []) if not r["passed"]}
    teacher = need(artifacts, TeacherRecord)
    # Like with like: the teacher as ONNX FP32 in ONNX Runtime, the runtime the student's files run
    # in (its eager figures are in the PyTorch table). A record from before it was timed: eager, said so.
    timed_as = TEACHER_ONNX if any(c["backend"] == TEACHER_ONNX for c in cells.values()) else "teacher-eager"
    rows = [{"model": "teacher", "runtime": timed_as, "files": [],
             "timed_in": "ONNX Runtime, FP32 (exported for timing only)" if timed_as == TEACHER_ONNX
             else "PyTorch eager",
             "bytes": teacher.file(TeacherRecord.WEIGHTS).stat().st_size, "top1": validate.teacher_top1,
             "within_budget": None,
             "p50_ms": {b: cells[(timed_as, b)]["p50_ms"] for b in batches if (timed_as, b) in cells},
             "spread_ms": {b: cells[(timed_as, b)].get("spread_ms") for b in batches if (timed_as, b) in cells}}]
    for target, entry in backends().items():
        if entry.kind not in artifacts or target not in validate.models:
            continue
        # the bundle's copy where there is one: it carries the class names and input spec in its metadata
        bundle = find(artifacts, BundleRecord)
        files = {name: bundle.file(name) if bundle is not None and bundle.file(name).is_file()
                 else artifacts[entry.kind].file(inner) for name, inner in entry.shipped.items()}
        rows.append({"model": f"student {target}", "runtime": target, "files": sorted(files),
                     "bytes": sum(f.stat().st_size for f in files.values() if f.is_file()),
                     "top1": validate.models[target]["top1"], "within_budget": target not in failed,
                     "p50_ms": {b: cells[(target, b)]["p50_ms"] for b in batches if (target, b) in cells},
                     "spread_ms": {b: cells[(target, b)].get("spread_ms") for b in batches if (target, b) in cells}})
    for row in rows[1:]:
        row["smaller"] = rows[0]["bytes"] / row["bytes"] if row["bytes"] else None
        row["faster"] = {b: rows[0]["p50_ms"][b] / ms for b, ms in row["p50_ms"].items() if b in rows[0]["p50_ms"]}
    return rows


def paired_sentence(metrics: dict) -> str:
    """The student against the teacher on the same test images, in one plain sentence."""
    ci, mc = metrics["student_vs_teacher"]["bootstrap"], metrics["student_vs_teacher"]["mcnemar"]
    diff, low, high = ci["difference"], ci["ci_low"], ci["ci_high"]
    verdict = ("the student is reliably better" if low > 0 else "the student is reliably worse" if high < 0
               else "the data cannot tell them apart")
    return (f"On the same {metrics['samples']:,} test images the student is {abs(diff):.2f} points "
            f"{'above' if diff >= 0 else 'below'} the teacher ({ci['confidence']:.0%} paired-bootstrap interval "
            f"{low:+.2f} to {high:+.2f}; McNemar p = {mc['p_value']:.3g}): {verdict}.")


def confusion_matrix(labels, predicted, classes: int):
    """Rows: true class, columns: predicted class (sklearn's layout, without importing sklearn,
    which costs every command that writes a report about two seconds of start-up)."""
    import numpy as np

    return np.bincount(labels.astype(np.int64) * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)


def _confusion(artifacts: dict[str, Artifact]) -> dict[str, list[list[int]]]:
    from cskd.checkpoint import load_tensors

    validation = need(artifacts, ValidationRecord)
    preds = load_tensors(validation.file(ValidationRecord.PREDICTIONS))
    labels = preds["labels"].numpy()
    classes = validation.record.num_classes
    return {who: confusion_matrix(labels, preds[who].numpy().argmax(1), classes).tolist()
            for who in ("student", "teacher")}


def build_report(manifest: Manifest, artifacts: dict[str, Artifact]) -> dict:
    validation = need(artifacts, ValidationRecord)
    validate, student = validation.artifact.metrics, need(artifacts, StudentRecord).record
    verdict = need(artifacts, VerdictRecord).artifact.metrics
    data = {**validation.artifact.record.get("data", {}), "train": student.train_samples,
            "val": student.val_samples, "test": validation.record.samples}
    latency = metrics_of(artifacts, LatencyRecord)
    serving = metrics_of(artifacts, ServingRecord)
    names = data.get("class_names") or [str(i) for i in range(validate["num_classes"])]
    models = validate["models"]
    return {
        "name": manifest.name,
        "environment": environment(),
        "data": data,
        "splits": {"training": "train (minus val)", "early_stopping_and_calibration": "val (from train)",
                   "metrics": validate["split"]},
        "artifacts": {kind: art.id for kind, art in artifacts.items()},
        "lineage": [{"kind": kind, "id": art.id, "inputs": art.record.get("inputs", {}),
                     "headline": art.record.get("headline", ""), "wall_s": art.record.get("wall_s")}
                    for kind, art in artifacts.items()],
        "metrics": validate,
        "compression": _compression(artifacts, latency),
        "deployables": _deployables(artifacts, latency, verdict),
        "paired": paired_sentence(validate),
        "latency": latency,
        "latency_warnings": latency_warnings(latency) if latency else [],
        "serving": served(serving) if serving else None,
        "fastest": fastest(latency, verdict) if latency else None,
        "quantization": metrics_of(artifacts, QuantizationRecord),
        "confusion": _confusion(artifacts),
        "per_class": [{"class": names[c], "teacher": t, "student": s,
                       "delta": (s - t) if s is not None and t is not None else None}
                      for c, (s, t) in enumerate(zip(models["student"]["per_class"], models["teacher"]["per_class"],
                                                     strict=True))],
        "gate": verdict,
        # validate.paper_protocol: the best epoch chosen on the test set (labelled; never read by the gate)
        "paper_protocol": student.paper_protocol,
        "training": {"teacher": training_curves(need(artifacts, TeacherRecord).artifact),
                     "student": training_curves(need(artifacts, StudentRecord).artifact)},
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
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

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
    charts["accuracy vs latency"] = _png(fig)
    plt.close(fig)
    for who, rows in report["training"].items():
        if not rows:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
        skip = {"epoch", "lr", "val_top1", "monitor_top1", "mean_temperature", "frac_mask_b", "frac_mask_c", "loss"}
        for term in [k for k in rows[0] if k not in skip] + ["loss"]:
            left.plot([r["epoch"] for r in rows], [r[term] for r in rows], marker="o", label=term)
        if all(r[t] > 0 for r in rows for t in rows[0] if t not in skip or t == "loss"):
            left.set_yscale("log")  # the first epoch's loss is many times the rest: a linear axis flattens them
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
        charts[f"{who} training"] = _png(fig)
        plt.close(fig)
    return charts


def _honest_top1_axis(ax, values: list[float], *, span: float = 5.0) -> None:
    """A top-1 axis at least ``span`` points tall, within [0, 100]: 0.3 points between two models
    must not look like a cliff, and the axis says how tall it is."""
    low, high = min(values), max(values)
    pad = max(span - (high - low), 0) / 2 + 0.5
    bottom, top = max(0.0, low - pad), min(100.0, high + pad)
    ax.set_ylim(bottom, top)
    ax.text(0.01, 0.01, f"axis: {top - bottom:.1f} points", transform=ax.transAxes, fontsize=7, color="#666")


def render_html(report: dict, links: dict[str, str] | None = None) -> str:
    import jinja2
    import yaml

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        r=report, charts=_charts(report), links=links or {},
        manifest_yaml=yaml.safe_dump(report["manifest"], sort_keys=False))


def write_report(manifest: Manifest, artifacts: dict[str, Artifact], folder: Path, *, run: dict,
                 log: Path | None = None, bundle: Path | None = None) -> Path:
    """Write report.json, report.html and run.log into ``<folder>/runs/<run id>/`` (``folder`` is
    ``<report.dir>/<name>``, made and marked by the pipeline) and point ``latest`` at it.
    ``bundle``: the shipped folder this run publishes into; the page links its files."""
    from pipeline.history import RUNS, write_run

    report = {**build_report(manifest, artifacts), "run": run}
    here = folder / RUNS / run["id"]
    shipped = find(artifacts, BundleRecord)
    links = {name: os.path.relpath(bundle / name, here) for name in shipped.record.files} \
        if bundle is not None and shipped is not None else {}

    def fill(tmp: Path) -> None:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.html").write_text(render_html(report, links))
        if log is not None and log.is_file():
            shutil.copyfile(log, tmp / "run.log")

    marker = {"manifest": manifest.name, "what": "run report", "gate_artifact": need(artifacts, VerdictRecord).id}
    return write_run(folder, run["id"], fill, marker=marker)
