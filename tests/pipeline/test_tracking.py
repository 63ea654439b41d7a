"""MLflow tracking against a real local SQLite store and a real `mlflow server` on localhost:
params, per-epoch metrics, artifacts and a registered model are read back through the client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
    assert "INFO" not in result.output and "View run" not in result.output  # MLflow's own lines stay out
    (link,) = [line for line in result.output.splitlines() if line.startswith("mlflow run: ")]
    assert link.endswith("?workflowType=machine_learning")  # a link that opens MLflow's training views
    # a server's URL; for a local store, the command that serves it first
    assert link.startswith(f"mlflow run: {uri}/#/experiments/" if uri.startswith("http") else
                           f"mlflow run: `mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/#/")
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cskd-tests")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens as model training
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id in link and run.info.status == "FINISHED"
    assert run.info.end_time - run.info.start_time >= 1000 * _run_seconds(result.output)  # open from the start
    assert run.data.tags["cskd.stage.distill"].startswith("ran: ") and run.data.metrics["stage/distill_s"] > 0
    params = run.data.params
    assert params["student.train.epochs"] == "2" and params["student.loss.kind"] == "cskd"
    history = client.get_metric_history(run.info.run_id, "distill/cs_cswt")  # "/": MLflow groups the charts
    assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)
    assert run.data.metrics["test/student_top1"] > 0 and run.data.metrics["gate/passed"] == 1.0
    assert all("." not in name for name in run.data.metrics)
    tags = run.data.tags
    assert tags["cskd.manifest"] == "tiny" and tags["cskd.gate"] == "PASS" and tags["cskd.version_shipped"] == "v1"
    assert "resnet8 -> resnet8" in tags["mlflow.note.content"]  # the run's description
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits/test" and dataset.dataset.digest
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/student.onnx", "bundle/model_card.json", "bundle/predict.py"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {"report/report.json",
                                                                                   "report/run.log"}
    (v1,) = client.search_model_versions("name='tiny'")
    model = mlflow.models.get_model_info(f"models:/tiny/{v1.version}")
    requirements = Path(mlflow.artifacts.download_artifacts(f"models:/tiny/{v1.version}/requirements.txt",
                                                           tracking_uri=uri)).read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "onnx", "onnxruntime"}  # what serves it
    assert tuple(model.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 8, 8)
    registered = client.get_registered_model("tiny")
    assert registered.description and v1.description and v1.tags["cskd.bundle_version"] == "v1"

    def champion() -> str:
        return client.get_model_version_by_alias("tiny", "champion").tags["cskd.bundle_version"]

    assert champion() == "v1"
    other = ["-o", "student.train.epochs=1", "-o", "ship.promote=always"]  # ships v2, which becomes latest
    assert CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet", *other]).exit_code == 0
    assert champion() == "v2"
    for command, expected in ((["promote", "tiny", "v1"], "v1"), (["rollback", "tiny"], "v2")):
        result = CliRunner().invoke(main, [*command, "-m", str(manifest)])
        assert result.exit_code == 0 and "warning" not in result.output, result.output
        assert champion() == expected, command


def _run_seconds(output: str) -> float:
    """The stages' own wall time, from their lines: what an MLflow run open for the whole run spans."""
    return sum(float(line.split()[3].removesuffix("s")) for line in output.splitlines()
               if line.startswith("[") and line.split()[2] in ("ran", "cached"))


def test_a_local_sqlite_tracking_store(workdir):
    _run_and_read_back(workdir, f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # no job runner (three huey consumer processes): the tracking API is what runs use
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
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


def test_an_unwritable_sqlite_store_costs_one_warning_and_no_retries(workdir):
    uri = f"sqlite:///{workdir / 'no-such-folder' / 'mlflow.db'}"
    manifest = write_manifest(workdir, edited(tracking={"mlflow": {"uri": uri}}))
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "no-such-folder" in warnings[0], result.output
    assert time.monotonic() - started < 60  # the pipeline's own work, not minutes of retries


def test_the_registry_follows_the_disk_without_a_manifest(workdir, monkeypatch):
    """v1 ships with tracking off, v2 with it on: the registry gets both (v1 on the next tracked
    ship), each tagged with its bundle version; `rollback` without -m moves the alias (the ship
    folder remembers where it is tracked); `track status` says when alias and latest disagree."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert CliRunner().invoke(main, ["run", "-m", str(write_manifest(workdir)), "-q"]).exit_code == 0
    tracked = write_manifest(workdir, edited(tracking={"mlflow": {"uri": uri, "experiment": "cskd-tests"}}))
    result = CliRunner().invoke(main, ["run", "-m", str(tracked), "-q", "-o", "student.train.epochs=1",
                                       "-o", "ship.promote=always"])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    registered = {v.tags["cskd.bundle_version"]: v.version for v in client.search_model_versions("name='tiny'")}
    assert sorted(registered) == ["v1", "v2"]  # v1, shipped before tracking, registered at the next ship

    def champion() -> str:
        return client.get_model_version_by_alias("tiny", "champion").tags["cskd.bundle_version"]

    assert champion() == "v2"
    result = CliRunner().invoke(main, ["rollback", "tiny"])  # no -m, no MLFLOW_TRACKING_URI
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert f"MLflow alias 'champion' -> model version {registered['v1']} (v1)" in result.output
    assert champion() == "v1"
    status = CliRunner().invoke(main, ["track", "status", "tiny"])
    assert status.exit_code == 0 and "latest v1 on disk" in status.output and "in step" in status.output
    client.set_registered_model_alias("tiny", "champion", registered["v2"])  # moved behind the pipeline's back
    status = CliRunner().invoke(main, ["track", "status", "tiny"])
    assert status.exit_code == 1 and "DISAGREE" in status.output and "promote tiny v1" in status.output


def test_a_run_is_tracked_while_it_trains_and_an_interrupted_one_ends_killed_with_its_last_epoch(workdir):
    """The MLflow run exists from the start: RUNNING, with each epoch's metrics as the teacher
    trains (logged by the process that trains). Ctrl-C (SIGINT) stops the run at the end of an
    epoch: the MLflow run ends KILLED, holding every epoch the run finished, the last one too."""
    import json
    import signal

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    manifest = write_manifest(workdir, edited(tracking={"mlflow": {"uri": uri, "experiment": "live"}},
                                              teacher__train__epochs=60))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen([str(Path(sys.executable).parent / "cskd-pipeline"), "run", "-m", str(manifest),
                                "--quiet"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    client = mlflow.MlflowClient(tracking_uri=uri)

    def epochs_on_disk() -> int:
        histories = list((workdir / ".cskd" / "work").glob("teacher-*/metrics.jsonl"))
        return len(histories[0].read_text().splitlines()) if histories else 0

    try:
        # The store is not touched until the teacher has finished two epochs: by then the run
        # created the SQLite tables. A client opening the file earlier would create them too, and
        # two processes migrating one fresh database race (the run's tracking would then be off).
        deadline, run = time.monotonic() + 240, None
        while time.monotonic() < deadline and process.poll() is None and epochs_on_disk() < 2:
            time.sleep(0.2)
        while time.monotonic() < deadline and process.poll() is None:
            experiment = client.get_experiment_by_name("live")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "teacher/val_top1")) >= 2:
                run = runs[0]
                break
            time.sleep(0.5)
        if run is None:
            process.kill()
            raise AssertionError(f"no epochs were logged while the teacher trained:\n{process.communicate()[0]}")
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        assert client.get_metric_history(run.info.run_id, "teacher/loss")  # every term of the row
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in output, output
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    (history,) = (workdir / ".cskd" / "work").glob("teacher-*/metrics.jsonl")  # the resumable run's
    finished = [json.loads(line)["epoch"] for line in history.read_text().splitlines()]
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "teacher/val_top1")]
    assert logged == finished and 2 <= finished[-1] < 60


def test_processes_starting_on_one_new_sqlite_store_all_track(tmp_path):
    """MLflow creates a new SQLite store's tables on first use; two processes doing it at once
    fail ("duplicate column name"). Two processes opening one new file through the pipeline's
    access both get a working store (unprotected, one of two such processes fails)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import sys; from pipeline.mlflow_access import mlflow_or_warn; m = mlflow_or_warn(sys.argv[1], print); "
              "m.MlflowClient(tracking_uri=sys.argv[1]).create_experiment(sys.argv[2]); print('created')")
    processes = [subprocess.Popen([sys.executable, "-c", script, uri, f"e{i}"], cwd=Path(__file__).parents[2],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert all(o.strip().endswith("created") and "warning" not in o for o in outputs), outputs
    names = {e.name for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()}
    assert {"e0", "e1"} <= names
