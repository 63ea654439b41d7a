"""`cskd-pipeline run --nproc 2`: the training stages run in 2 gloo processes (DDP) and the
pipeline completes; the process count is part of the training stages' recipe."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.manifest_io import manifest_from_text
from pipeline.orchestrator import plan
from tests.conftest import edited, write_manifest


def test_run_with_two_processes(workdir):
    text = edited(teacher__train__epochs=1, student__train__epochs=1)
    manifest = write_manifest(workdir, text)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "--quiet", "--nproc", "2"],
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[distill ] ran" in proc.stdout
    card = json.loads((workdir / "shipped" / "tiny" / "latest" / "model_card.json").read_text())
    assert card["metrics"]["onnx_agreement"] >= 99.0
    history = next((workdir / ".cskd" / "artifacts" / "distill").glob("*/metrics.jsonl")).read_text().splitlines()
    assert len(history) == 1  # one writer (rank 0)
    single = {p.kind: p.id for p in plan(manifest_from_text(text))}
    double = {p.kind: p.id for p in plan(manifest_from_text(edited(text, distributed={"nproc": 2})))}
    assert single["teacher"] != double["teacher"] and single["distill"] != double["distill"]
    assert double["distill"] in card["artifacts"]["distill"]
