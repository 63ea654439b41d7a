"""A new export back-end, registered entirely in this file: its stage, its runtime, its own
``export:`` section with a budget. It goes through export, validate, latency, gate and ship with
no other file changed: the registries are the only way in (what docs/architecture.md promises).

The back-end, ``onnx-rounded``, rounds the student's ONNX weights to ``export.rounded.decimals``
decimals. At 3 decimals it is as good as FP32 and its budget ``export.rounded.max_drop`` is the
threshold the gate judges; at 0 the input normalisation's std rounds to zero and the file computes
NaN, which the gate must name instead of crashing or ranking it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import Field

from cskd.config import Strict
from foundation.backends import (
    Backend,
    register_backend,
    unregister_backend,
)
from foundation.contracts import Stage, StageContext, StageResult
from foundation.errors import EXIT_GATE_FAILED
from foundation.sections import EXPORT_SETTINGS
from pipeline.cli import main
from stagekit.onnx_files import ONNX_FILE, onnx_loader
from tests.conftest import edited, working_dir, write_manifest

TARGET, KIND, FILE, SHIPPED = "onnx-rounded", "test_rounded", "rounded.onnx", "student_rounded.onnx"


class RoundedSection(Strict):
    decimals: int = Field(3, ge=0, le=8, description="decimals the weights keep")
    max_drop: float = Field(1.0, ge=0, le=100, description="top-1 points it may lose against FP32")


class RoundedConfig(Strict):
    decimals: int


@pytest.fixture
def rounded_backend():
    """The back-end registered for one test, and taken out of every registry after it."""

    class RoundedStage(Stage):
        kind, version, Config, requires = KIND, 1, RoundedConfig, ("export",)

        @classmethod
        def configure(cls, manifest) -> RoundedConfig | None:
            if TARGET not in manifest.export.targets:
                return None
            return RoundedConfig(decimals=manifest.export.rounded.decimals)

        def run(self, config: RoundedConfig, ctx: StageContext) -> StageResult:
            import onnx
            from onnx import numpy_helper

            model = onnx.load(ctx.inputs["export"].file(ONNX_FILE))
            for tensor in model.graph.initializer:
                values = numpy_helper.to_array(tensor)
                if values.dtype == np.float32:
                    tensor.CopyFrom(numpy_helper.from_array(values.round(config.decimals), tensor.name))
            onnx.save(model, ctx.out_dir / FILE)
            return StageResult({"decimals": config.decimals}, f"weights rounded to {config.decimals} decimals",
                               extra={"input": ctx.inputs["export"].record["input"]})

    EXPORT_SETTINGS.register("rounded", RoundedSection, Field(RoundedSection(), description="onnx-rounded"))
    register_backend(Backend(TARGET, kind=KIND, file=FILE, load=onnx_loader(KIND, FILE),
                             budget=lambda export: export.rounded.max_drop, requires=lambda export: ("onnx",),
                             shipped={SHIPPED: FILE}, description="ONNX with rounded weights (a test's)"))
    try:
        yield
    finally:
        unregister_backend(TARGET)
        EXPORT_SETTINGS.unregister("rounded")
        Stage.registry.pop(KIND, None)


def _run(folder, rounded: dict) -> tuple[int, str, dict]:
    text = edited(export={"opset": 18, "targets": ["onnx", TARGET], "rounded": rounded},
                  latency={"batch_sizes": [1, 8], "runs": 100, "warmup": 2})
    with working_dir(folder):
        manifest = write_manifest(folder, text)
        result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
    report = json.loads((folder / "reports" / "tiny" / "latest" / "report.json").read_text())
    return result.exit_code, result.output, report


def test_a_backend_registered_in_a_test_file_is_exported_validated_timed_gated_and_shipped(
        rounded_backend, shipped_run, tmp_path):
    run_folder = shipped_run[0]
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder, symlinks=True)  # the tiny run's store: training is cached

    code, output, report = _run(folder, {"decimals": 3, "max_drop": 5.0})
    assert code == 0, output
    assert report["metrics"]["exports"][TARGET]["top1"] >= report["metrics"]["models"]["student"]["top1"] - 5.0
    timed = {cell["backend"] for cell in report["latency"]["results"]}
    assert TARGET in timed
    rule = next(r for r in report["gate"]["rules"] if r.get("target") == TARGET)
    assert rule["passed"] and rule["threshold"] == pytest.approx(report["metrics"]["models"]["student"]["top1"] - 5.0,
                                                                 abs=0.01)
    bundle = folder / "shipped" / "tiny" / "latest"
    assert (bundle / SHIPPED).is_file() and SHIPPED in json.loads((bundle / "model_card.json").read_text())["files"]

    # a broken file: NaN logits on every image are named by the gate, and nothing new ships
    shipped = sorted(p.name for p in bundle.parent.iterdir())
    code, output, report = _run(folder, {"decimals": 0, "max_drop": 100.0})
    assert code == EXIT_GATE_FAILED, output
    failed = [r for r in report["gate"]["rules"] if r.get("target") == TARGET and not r["passed"]]
    assert [r["measured"] for r in failed] == [report["metrics"]["samples"]] and "non-finite logits" in output
    assert report["metrics"]["exports"][TARGET]["top1"] == 0.0  # an image without a prediction is wrong
    assert sorted(p.name for p in bundle.parent.iterdir()) == shipped
