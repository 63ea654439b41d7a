"""MLflow tracking of a run (optional extra ``[mlflow]``): params, per-epoch metrics, final
metrics, the report and bundle as artifacts, and the shipped model in the registry.

Enabled by ``tracking: {mlflow: {uri, experiment}}`` in the manifest or by the
``MLFLOW_TRACKING_URI`` environment variable. Tracking never decides a run: a
server that is down or refuses gets a one-line warning, and everything the run
made is on disk regardless. Nothing here is part of any artifact id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.core.bundle_seal import verify_bundle
from pipeline.core.manifest import Manifest
from pipeline.core.records import (
    LatencyRecord,
    StudentRecord,
    TeacherRecord,
    ValidationRecord,
    VerdictRecord,
    find,
    kind_of,
    need,
    training_curves,
)
from pipeline.core.store import Artifact
from pipeline.history import flatten
from pipeline.mlflow_access import mlflow_or_warn as _mlflow
from pipeline.mlflow_access import quiet_output as _quiet_output
from pipeline.mlflow_access import tracking_uri
from pipeline.mlflow_access import warn as _warn
from pipeline.registry import backfill, register, remember_tracking

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow opens it as model training


def track(manifest: Manifest, artifacts: dict[str, Artifact], *, run: dict, report_dir: Path | None,
          bundle_dir: Path | None, echo: Callable[[str], None]) -> str | None:
    """Log the run to MLflow; returns the MLflow run id, or None (not configured, or failed)."""
    uri = tracking_uri(manifest)
    mlflow = _mlflow(uri, echo) if uri is not None else None
    if mlflow is None:
        return None
    section = manifest.tracking.mlflow
    passed = need(artifacts, VerdictRecord).record.passed
    release = run.get("release") or {}
    tags = {"cskd.manifest": manifest.name, "cskd.run": run["id"], "cskd.gate": "PASS" if passed else "FAIL",
            "cskd.version_shipped": release.get("version") or "none", "cskd.became_latest": str(release.get("latest"))}
    notes: list[str] = []  # said after MLflow's output is ours again
    try:
        with _quiet_output():
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment((section.experiment if section is not None else None) or manifest.name)
            mlflow.set_experiment_tag(*EXPERIMENT_KIND)
            with mlflow.start_run(run_name=run["id"], tags=tags, description=_describe(manifest, artifacts, release)) \
                    as active:
                params = flatten(manifest.model_dump(mode="json", by_alias=True))
                mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in params.items()})
                mlflow.set_tags({f"cskd.artifact.{k}": a.id for k, a in artifacts.items()})
                for role in (TeacherRecord, StudentRecord):  # as teacher/... and distill/... (the stage kinds)
                    prefix, trained = kind_of(role), find(artifacts, role)
                    for row in training_curves(trained.artifact if trained else None):
                        mlflow.log_metrics({f"{prefix}/{k}": float(v) for k, v in row.items()
                                            if k != "epoch" and v is not None}, step=int(row["epoch"]))
                _final_metrics(mlflow, artifacts)
                _log_test_data(mlflow, manifest, artifacts)
                if report_dir is not None:
                    mlflow.log_artifacts(str(report_dir), artifact_path="report")
                if bundle_dir is not None:
                    verify_bundle(bundle_dir)  # what the registry gets is what shipped
                    mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
                    register(mlflow, manifest.name, bundle_dir, tags=tags, latest=bool(release.get("latest")))
                    backfill(mlflow, manifest.name, bundle_dir.parent, echo=notes.append)
                run_id, experiment_id = active.info.run_id, active.info.experiment_id
        for line in notes:
            echo(line)
        if bundle_dir is not None:
            remember_tracking(bundle_dir.parent, uri)
        if uri.startswith(("http://", "https://")):
            # MLflow 3's UI picks its GenAI or model-training views from this parameter (or the
            # visitor's last choice), not from the experiment's tag: the link opens the training view
            echo(f"mlflow run: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?"
                 f"workflowType=machine_learning")
        return run_id
    except Exception as exc:  # noqa: BLE001 - tracking is best effort by design: the run's outputs are on disk
        _warn(echo, uri, exc)
        return None


def _describe(manifest: Manifest, artifacts: dict[str, Artifact], release: dict) -> str:
    m = need(artifacts, ValidationRecord).artifact.metrics
    verdict = "passed" if need(artifacts, VerdictRecord).record.passed else "failed"
    shipped = f"shipped as {release['version']} (now latest)" if release.get("version") else "nothing shipped"
    return (f"{manifest.teacher.model} -> {manifest.student.model} with {manifest.student.loss.kind} on "
            f"{manifest.data.name}: test top-1 teacher {m['teacher_top1']:.2f}, student {m['student_top1']:.2f}, "
            f"ONNX {m['onnx_top1']:.2f}. Gate {verdict}; {shipped}.")


def _final_metrics(mlflow, artifacts: dict[str, Artifact]) -> None:
    validate = need(artifacts, ValidationRecord).artifact.metrics
    final = {"test/teacher_top1": validate["teacher_top1"], "test/student_top1": validate["student_top1"],
             "gate/passed": float(need(artifacts, VerdictRecord).record.passed)}
    final.update({f"test/{target}_top1": values["top1"] for target, values in validate["exports"].items()})
    if (latency := find(artifacts, LatencyRecord)) is not None:
        for cell in latency.record.results:
            final[f"latency/{cell['backend']}_b{cell['batch']}_p50_ms"] = cell["p50_ms"]
    mlflow.log_metrics(final)


def _log_test_data(mlflow, manifest: Manifest, artifacts: dict[str, Artifact]) -> None:
    """The test split as an MLflow dataset whose digest is the pipeline's data fingerprint."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    data = need(artifacts, ValidationRecord).artifact.record.get("config", {}).get("data", {})
    source = CodeDatasetSource({"data": manifest.data.name, "root": str(manifest.data.root),
                                "max_test_samples": str(manifest.data.max_test_samples)})
    dataset = MetaDataset(source, name=f"{manifest.data.name}/test", digest=str(data.get("fingerprint", ""))[:36])
    mlflow.log_input(dataset, context="test")
