"""The serving stage (``latency.serving``) and the gate's ``gate.serving`` rule, on a copy of the
tiny run's store: teacher, student and exports are cached, so only latency, serving, gate and
ship run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from foundation.errors import EXIT_GATE_FAILED
from pipeline.cli import main
from tests.conftest import edited, working_dir, write_manifest

pytest.importorskip("litserve", reason="litserve is not installed (the [serve] extra)")
pytestmark = pytest.mark.isolated  # `make test` runs it in a pytest process of its own (see pyproject's markers)

LATENCY = {"batch_sizes": [1, 8], "runs": 100, "warmup": 2, "threads": 1}
SERVING = {"concurrency": [1, 4], "duration_s": 1}


def _artifacts(folder: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (folder / ".cskd").glob(f"artifacts/{kind}/*/artifact.json")]


def test_the_served_student_is_load_tested_reported_and_gated(shipped_run):
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")
    with working_dir(folder):
        def manifest(gate_serving: dict | None = None, **serving):
            gate = {"max_drop": 100.0, "min_onnx_agreement": 99.0,
                    **({"serving": gate_serving} if gate_serving else {})}
            return write_manifest(folder, edited(latency={**LATENCY, "serving": {**SERVING, **serving}}, gate=gate,
                                                 ship={"dir": "shipped", "promote": "always"}))

        def run(gate_serving: dict | None = None, **serving):
            path = manifest(gate_serving, **serving)
            # a process of its own, as a user runs it: this process has loaded every runtime of the suite
            # (a run here in the whole suite once died of SIGSEGV; alone, or from the CLI, it never did)
            return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", str(path), "--quiet"],
                                  cwd=folder, capture_output=True, text=True, timeout=600)

        result = run({"p99_ms": 60_000})
        assert result.returncode == 0, result.stdout + result.stderr
        [serving] = _artifacts(folder, "serving")
        metrics = serving["metrics"]
        assert metrics["target"] == "onnx" and metrics["engine"] == "litserve"
        assert [r["concurrency"] for r in metrics["rows"]] == [1, 4]
        assert all(r["requests"] > 0 and r["failures"] == 0 and r["p50_ms"] <= r["p99_ms"] for r in metrics["rows"])
        assert set(metrics["in_process"]) == {"1", "8"}  # the latency stage's figures for the same file
        report = json.loads((folder / "reports" / "tiny" / "latest" / "report.json").read_text())
        assert report["serving"]["reference_batch"] == "8" and report["serving"]["rows"][1]["share"] > 0
        html = (folder / "reports" / "tiny" / "latest" / "report.html").read_text()
        assert "Served against in-process (onnx, litserve, 1 replica" in html
        [rule] = [r for r in report["gate"]["rules"] if r["rule"].startswith("served onnx")]
        assert rule["passed"] and rule["measured"] == round(metrics["rows"][1]["p99_ms"], 2)
        latency_ids = {a["id"] for a in _artifacts(folder, "latency")}

        # A throughput nobody reaches: the gate fails on it, from the cached serving figures (in this
        # process: nothing is served or timed again, only judged)
        result = CliRunner().invoke(main, ["run", "-m", str(manifest({"min_throughput": 1e8})), "--quiet"])
        assert result.exit_code == EXIT_GATE_FAILED, result.output
        assert "requests/s >= gate.serving.min_throughput" in result.output
        assert len(_artifacts(folder, "serving")) == 1  # judged again, not served again

        # A serving setting reruns serving (and what reads it), never the in-process latency
        from pipeline.manifest_io import load_manifest
        from pipeline.orchestrator import plan

        ids = {p.kind: p.id for p in plan(load_manifest(manifest({"p99_ms": 60_000}, concurrency=[2])))}
        assert ids["latency"] in latency_ids and ids["serving"] != serving["id"]


def test_gate_serving_without_latency_serving_is_a_manifest_error(workdir):
    path = write_manifest(workdir, edited(latency=LATENCY, gate={"max_drop": 1.0, "serving": {"p99_ms": 50}}))
    result = CliRunner().invoke(main, ["validate", "-m", str(path)])
    assert result.exit_code == 2 and "gate.serving needs a 'latency.serving' section" in result.output
