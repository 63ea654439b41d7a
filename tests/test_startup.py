"""Start-up stays fast: planning imports none of the heavy modules that only some stages use
(benchmarks/startup.py measures the times; this test keeps the imports from creeping back)."""

from __future__ import annotations

import json
import subprocess
import sys

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
