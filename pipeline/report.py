"""Run reports: ``report.json`` (everything, machine-readable) and a self-contained
``report.html`` rendered from a Jinja2 template (``report.html.j2``): the compression
story (teacher against student: size, accuracy, latency), the full latency table
with warnings, confusion matrices, per-class accuracy with class names, training
curves of every loss term, the gate's verdicts, the manifest, the lineage and
links to the shipped files. Charts are inline PNGs, so the page opens offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from exports.latency import within_noise
from foundation.artifact import Artifact
from foundation.backends import NOT_SHIPPED, TEACHER_ONNX, backends, fastest_passing
from foundation.environment import environment
from foundation.manifest import Manifest
from foundation.records import (
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
from pipeline.report_charts import charts


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


def render_html(report: dict, links: dict[str, str] | None = None) -> str:
    import jinja2
    import yaml

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        r=report, charts=charts(report), links=links or {},
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
