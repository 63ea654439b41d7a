"""MLflow tracking of a run (optional extra ``[mlflow]``): params, per-epoch metrics, final
metrics, the report and bundle as artifacts, and the shipped model in the registry.

Enabled by ``tracking: {mlflow: {uri, experiment}}`` in the manifest or by the
``MLFLOW_TRACKING_URI`` environment variable. Tracking never decides a run: a
server that is down or refuses gets a one-line warning, and everything the run
made is on disk regardless. Nothing here is part of any artifact id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.core.manifest import Manifest
from pipeline.core.store import Artifact
from pipeline.history import flatten
from pipeline.report import training_curves


def tracking_uri(manifest: Manifest) -> str | None:
    section = manifest.tracking.mlflow
    return (section.uri if section is not None and section.uri else None) or os.environ.get("MLFLOW_TRACKING_URI")


def track(manifest: Manifest, artifacts: dict[str, Artifact], *, run: dict, report_dir: Path | None,
          bundle_dir: Path | None, echo: Callable[[str], None]) -> str | None:
    """Log the run to MLflow; returns the MLflow run id, or None (not configured, or failed)."""
    uri = tracking_uri(manifest)
    if uri is None:
        return None
    # Fail fast on an unreachable server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow
    except ImportError:
        echo("warning: MLflow tracking is configured but mlflow is not installed; pip install 'cskd-pipeline[mlflow]'")
        return None
    section = manifest.tracking.mlflow
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment((section.experiment if section is not None else None) or manifest.name)
        with mlflow.start_run(run_name=run["id"]) as active:
            params = flatten(manifest.model_dump(mode="json", by_alias=True))
            mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in params.items()})
            mlflow.set_tags({"cskd.run": run["id"], **{f"cskd.artifact.{k}": a.id for k, a in artifacts.items()}})
            for role in ("teacher", "distill"):
                for row in training_curves(artifacts.get(role)):
                    mlflow.log_metrics({f"{role}.{k}": float(v) for k, v in row.items() if k != "epoch" and v is not None},
                                       step=int(row["epoch"]))
            _final_metrics(mlflow, artifacts)
            if report_dir is not None:
                mlflow.log_artifacts(str(report_dir), artifact_path="report")
            if bundle_dir is not None:
                mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
                _register(mlflow, manifest.name, bundle_dir)
            return active.info.run_id
    except Exception as exc:  # noqa: BLE001 - tracking is best effort by design: the run's outputs are on disk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        echo(f"warning: MLflow tracking at {uri} failed ({first[:200]}); the run's report and bundle are on disk")
        return None


def _final_metrics(mlflow, artifacts: dict[str, Artifact]) -> None:
    validate = artifacts["validate"].metrics
    final = {"test.teacher_top1": validate["teacher_top1"], "test.student_top1": validate["student_top1"],
             "gate.passed": float(bool(artifacts["gate"].metrics.get("passed")))}
    final.update({f"test.{target}.top1": values["top1"] for target, values in validate["exports"].items()})
    if "latency" in artifacts:
        for cell in artifacts["latency"].metrics["results"]:
            final[f"latency.{cell['backend']}.b{cell['batch']}.p50_ms"] = cell["p50_ms"]
    mlflow.log_metrics(final)


def _register(mlflow, name: str, bundle_dir: Path) -> None:
    """The shipped ONNX student in the Model Registry (ONNX flavour, with its signature)."""
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = onnx.load(str(bundle_dir / "student.onnx"))
    spec = json.loads({p.key: p.value for p in model.metadata_props}["cskd.input"])
    classes = len(json.loads({p.key: p.value for p in model.metadata_props}["cskd.class_names"]))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec["shape"][1:]), spec["name"])]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "logits")]))
    mlflow.onnx.log_model(model, name="model", signature=signature, registered_model_name=name)
