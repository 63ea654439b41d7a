"""FP16 ONNX: weights and compute in float16, inputs and outputs float32. Registers
``onnx-fp16``."""

from __future__ import annotations

from pydantic import Field

from cskd.config import Strict
from exports.fp16 import convert_fp16
from foundation.backends import Backend, register_backend
from foundation.contracts import Stage, StageContext, StageResult
from foundation.fields import Points
from foundation.manifest import Manifest
from foundation.sections import EXPORT_SETTINGS
from stagekit.onnx_files import ONNX_FILE, onnx_loader

FP16_FILE = "model_fp16.onnx"
EXPORT_SETTINGS.register(
    "fp16_max_drop", Points, Field(0.5, description="top-1 points FP16 may lose against FP32")
)


class Fp16Config(Strict):
    keep_io_types: bool = True


class Fp16Stage(Stage):
    kind = "export_fp16"
    version = 1
    Config = Fp16Config
    requires = ("export",)

    @classmethod
    def configure(cls, manifest: Manifest) -> Fp16Config | None:
        return Fp16Config() if "onnx-fp16" in manifest.export.targets else None

    def run(self, config: Fp16Config, ctx: StageContext) -> StageResult:
        path = convert_fp16(ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / FP16_FILE)
        return StageResult(
            {"onnx_bytes": path.stat().st_size, "io_types": "float32", "compute": "float16"},
            f"{path.stat().st_size / 1024:.0f} KiB, fp16 inside, fp32 inputs/outputs",
            extra={"input": ctx.inputs["export"].record["input"]},
        )


register_backend(
    Backend(
        "onnx-fp16",
        kind="export_fp16",
        file=FP16_FILE,
        load=onnx_loader("export_fp16", FP16_FILE),
        budget=lambda export: export.fp16_max_drop,
        shipped={"student_fp16.onnx": FP16_FILE},
        # on a CPU ONNX Runtime emulates float16 (slower than FP32): auto takes it
        # on a GPU only
        auto_device="cuda",
        description="ONNX FP16 (float32 I/O), ONNX Runtime CPU",
    )
)
