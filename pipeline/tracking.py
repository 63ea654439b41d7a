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
import time
from collections.abc import Callable
from pathlib import Path

from foundation.artifact import Artifact
from foundation.bundle_seal import verify_bundle
from foundation.live_metrics import RUN_ENV
from foundation.manifest import Manifest
from foundation.records import (
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
from pipeline.history import flatten
from pipeline.mlflow_access import mlflow_or_warn as _mlflow
from pipeline.mlflow_access import quiet_output as _quiet_output
from pipeline.mlflow_access import tracking_uri
from pipeline.mlflow_access import warn as _warn
from pipeline.registry import backfill, register, remember_tracking

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow opens it as model training


class LiveRun:
    """The run's MLflow run, opened when the pipeline run starts (status RUNNING) and ended with
    it: FINISHED (the gate's verdict is a tag), FAILED on an error, KILLED on Ctrl-C or SIGTERM.
    While it is open the environment names it, so the training processes log each epoch as it is
    measured (``foundation.live_metrics``), and each stage's result is logged as it finishes.
    ``run_id`` None: tracking is configured but failed (one warning said); the run goes on."""

    STATUS = {"passed": "FINISHED", "partial": "FINISHED", "failed": "FINISHED", "interrupted": "KILLED",
              "error": "FAILED"}

    def __init__(self, uri: str, run_id: str | None, client=None, echo: Callable[[str], None] = print):
        self.uri, self.run_id, self.client, self.echo = uri, run_id, client, echo
        self._environment: dict[str, str | None] = {}

    @classmethod
    def open(cls, manifest: Manifest, run: dict, echo: Callable[[str], None]) -> LiveRun | None:
        """None when tracking is not configured."""
        uri = tracking_uri(manifest)
        if uri is None:
            return None
        mlflow = _mlflow(uri, echo)
        if mlflow is None:
            return cls(uri, None, echo=echo)
        section = manifest.tracking.mlflow
        try:
            with _quiet_output():
                mlflow.set_tracking_uri(uri)
                experiment = mlflow.set_experiment((section.experiment if section is not None else None)
                                                   or manifest.name)
                mlflow.set_experiment_tag(*EXPERIMENT_KIND)
                client = mlflow.MlflowClient(tracking_uri=uri)
                opened = client.create_run(experiment.experiment_id, run_name=run["id"],
                                           tags={"cskd.manifest": manifest.name, "cskd.run": run["id"]})
        except Exception as exc:  # noqa: BLE001 - tracking is best effort by design
            _warn(echo, uri, exc)
            return cls(uri, None, echo=echo)
        live = cls(uri, opened.info.run_id, client, echo)
        echo(f"mlflow run: {open_line(uri, experiment.experiment_id, live.run_id)}")
        return live

    def __enter__(self) -> LiveRun:
        if self.run_id is not None:  # inherited by every process the run starts
            for name, value in ((RUN_ENV, self.run_id), ("MLFLOW_TRACKING_URI", self.uri)):
                self._environment[name] = os.environ.get(name)
                os.environ[name] = value
        return self

    def __exit__(self, *exc) -> None:
        for name, value in self._environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def stage(self, kind: str, status: str, wall_s: float, headline: str) -> None:
        """A stage's result as it finishes: its wall time, and a tag with its status and headline."""
        self._best_effort(lambda: (self.client.log_metric(self.run_id, f"stage/{kind}_s", wall_s),
                                   self.client.set_tag(self.run_id, f"cskd.stage.{kind}", f"{status}: {headline}")))

    def end(self, status: str) -> None:
        self._best_effort(lambda: self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED")))

    def _best_effort(self, call: Callable[[], object]) -> None:
        if self.run_id is None:
            return
        try:
            with _quiet_output():
                call()
        except Exception as exc:  # noqa: BLE001
            _warn(self.echo, self.uri, exc)
            self.run_id = None  # one warning: nothing more is tried


def open_line(uri: str, experiment_id: str, run_id: str) -> str:
    """Where to open the run: its URL on a server; for a local store, the command that serves it
    and the URL the run then has. MLflow 3's UI picks its GenAI or model-training views from the
    ``workflowType`` parameter (or the visitor's last choice), not from the experiment's tag."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"`mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{path}"


def track(manifest: Manifest, artifacts: dict[str, Artifact], *, run: dict, report_dir: Path | None,
          bundle_dir: Path | None, live: LiveRun | None, echo: Callable[[str], None]) -> str | None:
    """Complete the run's live MLflow run: params, the epochs no process logged live (a cached
    stage's), final metrics, the report and bundle, the registry. Returns the MLflow run id, or None."""
    if live is None or live.run_id is None:
        return None
    mlflow = _mlflow(live.uri, echo)
    if mlflow is None:
        return None
    passed = need(artifacts, VerdictRecord).record.passed
    release = run.get("release") or {}
    tags = {"cskd.manifest": manifest.name, "cskd.run": run["id"], "cskd.gate": "PASS" if passed else "FAIL",
            "cskd.version_shipped": release.get("version") or "none", "cskd.became_latest": str(release.get("latest"))}
    notes: list[str] = []  # said after MLflow's output is ours again
    try:
        with _quiet_output():
            mlflow.set_tracking_uri(live.uri)
            with mlflow.start_run(run_id=live.run_id):
                mlflow.set_tags({**tags, "mlflow.note.content": _describe(manifest, artifacts, release)})
                params = flatten(manifest.model_dump(mode="json", by_alias=True))
                mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in params.items()})
                mlflow.set_tags({f"cskd.artifact.{k}": a.id for k, a in artifacts.items()})
                _missing_epochs(live.client, live.run_id, artifacts)
                _final_metrics(mlflow, artifacts)
                _log_test_data(mlflow, manifest, artifacts)
                if report_dir is not None:
                    mlflow.log_artifacts(str(report_dir), artifact_path="report")
                if bundle_dir is not None:
                    verify_bundle(bundle_dir)  # what the registry gets is what shipped
                    mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
                    register(mlflow, manifest.name, bundle_dir, tags=tags, latest=bool(release.get("latest")))
                    backfill(mlflow, manifest.name, bundle_dir.parent, echo=notes.append)
        for line in notes:
            echo(line)
        if bundle_dir is not None:
            remember_tracking(bundle_dir.parent, live.uri)
        return live.run_id
    except Exception as exc:  # noqa: BLE001 - tracking is best effort by design: the run's outputs are on disk
        _warn(echo, live.uri, exc)
        return None


def _missing_epochs(client, run_id: str, artifacts: dict[str, Artifact]) -> None:
    """Each training stage's per-epoch rows (as teacher/... and distill/..., the stage kinds) that
    are not in the run yet: all of a cached stage's, none of one that trained in this run."""
    from mlflow.entities import Metric

    stamp, missing = int(time.time() * 1000), []
    for role in (TeacherRecord, StudentRecord):
        prefix, trained = kind_of(role), find(artifacts, role)
        logged: dict[str, set[int]] = {}
        for row in training_curves(trained.artifact if trained else None):
            for name, value in row.items():
                if name == "epoch" or value is None:
                    continue
                key = f"{prefix}/{name}"
                if key not in logged:
                    logged[key] = {m.step for m in client.get_metric_history(run_id, key)}
                if int(row["epoch"]) not in logged[key]:
                    missing.append(Metric(key, float(value), stamp, int(row["epoch"])))
    for start in range(0, len(missing), 1000):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=missing[start:start + 1000])


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
