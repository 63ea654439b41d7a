"""Start-up stays fast: planning imports none of the heavy modules that only some stages use
(benchmarks/startup.py measures the times; this test keeps the imports from creeping back)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torchvision", "torch._dynamo", "scipy.stats", "sklearn", "mlflow", "openvino", "litserve", "ray",
         "matplotlib", "onnxruntime")


def test_planning_the_quickstart_imports_no_heavy_module(tmp_path):
    code = ("import json, sys\n"
            "from pipeline.cli import main\n"
            "try:\n"
            "    main(['plan', '-m', 'manifests/quickstart.yaml'], standalone_mode=False)\n"
            "finally:\n"
            f"    print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# The commands that read or move what runs made: none of them computes, so none imports torch or
# ONNX Runtime (issue 35); gc reads only its manifest's store. schema, validate and plan read the
# manifest's schema, which the stages and stagekit register (with torch-importing modules), and
# still do.
LIGHT = (["--help"], ["runs"], ["runs", "--json"], ["diff", "{run}", "{run}"], ["bundle", "verify", "shipped/tiny/v1"],
         ["promote", "tiny", "v1"], ["rollback", "tiny"], ["plugins"], ["gc", "-m", "tiny.yaml"])
COMPUTE = ("torch", "onnxruntime")


@pytest.mark.parametrize("command", LIGHT, ids=lambda c: " ".join(c))
def test_the_light_commands_import_neither_torch_nor_onnx_runtime(shipped_run, tmp_path, command):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(shipped_run[0], folder, symlinks=True)  # promote and rollback move its latest
    (run,) = [p.name for p in (folder / "reports" / "tiny" / "runs").iterdir()]
    args = [part.format(run=run) for part in command]
    code = ("import json, sys\n"
            "from pipeline.cli import main\n"
            "try:\n"
            f"    main({args!r}, standalone_mode=False)\n"
            "finally:\n"
            f"    print(json.dumps([m for m in {COMPUTE!r} if m in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], result.stdout + result.stderr
