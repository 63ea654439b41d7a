"""MLflow tracking against a real local SQLite store and a real `mlflow server` on localhost:
params, per-epoch metrics, artifacts and a registered model are read back through the client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import edited, write_manifest

mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed (make install includes it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_and_read_back(workdir, uri: str) -> None:
    manifest = write_manifest(workdir, edited(tracking={"mlflow": {"uri": uri, "experiment": "cskd-tests"}}))
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cskd-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["student.train.epochs"] == "2" and params["student.loss.kind"] == "cskd"
    history = client.get_metric_history(run.info.run_id, "distill.cs_cswt")
    assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)
    assert run.data.metrics["test.student_top1"] > 0 and run.data.metrics["gate.passed"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/student.onnx", "bundle/model_card.json", "bundle/predict.py"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {"report/report.json",
                                                                                   "report/run.log"}
    (version,) = client.search_model_versions("name='tiny'")
    model = mlflow.models.get_model_info(f"models:/tiny/{version.version}")
    assert tuple(model.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 8, 8)


def test_a_local_sqlite_tracking_store(workdir):
    _run_and_read_back(workdir, f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded: at most a minute to come up
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within a minute")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # starts an MLflow server (about 20 s) and runs the pipeline against it
def test_a_live_tracking_server(workdir, mlflow_server):
    _run_and_read_back(workdir, mlflow_server)


def test_a_server_that_is_down_costs_one_warning_and_nothing_else(workdir):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    manifest = write_manifest(workdir, edited(tracking={"mlflow": {"uri": uri}}))
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and uri in warnings[0]
    assert (workdir / "shipped" / "tiny" / "latest" / "student.onnx").is_file()
