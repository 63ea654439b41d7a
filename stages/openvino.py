"""OpenVINO IR from the FP32 ONNX model (``openvino``) or from the INT8 QDQ model
(``openvino-int8``). Both are validated, gated and timed like every other target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cskd.config import Strict
from exports.openvino import INSTALL_HINT, compile_ir, convert_to_ir, require_openvino, run_batched
from foundation.backends import (
    Backend,
    backend,
    installed,
    register_backend,
)
from foundation.contracts import Stage, StageContext, StageResult
from foundation.environment import package_version
from foundation.fields import Points
from foundation.manifest import Manifest
from foundation.sections import EXPORT_SETTINGS

IR_FILE, WEIGHTS_FILE = "model.xml", "model.bin"


class OpenVinoSection(Strict):
    max_drop: Points = Field(
        0.5, description="top-1 points the OpenVINO FP32 model may lose against FP32"
    )


EXPORT_SETTINGS.register(
    "openvino",
    OpenVinoSection,
    Field(OpenVinoSection(), description="the OpenVINO FP32 IR (target openvino)"),
)


class OpenVinoConfig(Strict):
    source: Literal["onnx", "onnx-int8"]
    openvino: str | None  # the converter's version shapes the IR


class _OpenVinoStage(Stage):
    Config = OpenVinoConfig
    source: str
    target: str

    @classmethod
    def configure(cls, manifest: Manifest) -> OpenVinoConfig | None:
        if cls.target not in manifest.export.targets:
            return None
        return OpenVinoConfig(source=cls.source, openvino=package_version("openvino"))

    def inputs(self, config: OpenVinoConfig) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("export", backend(config.source).kind)))

    def preflight(self, config: OpenVinoConfig) -> None:
        require_openvino()

    def run(self, config: OpenVinoConfig, ctx: StageContext) -> StageResult:
        source = backend(config.source)
        xml = convert_to_ir(ctx.inputs[source.kind].file(source.file), ctx.out_dir / IR_FILE)
        size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        return StageResult(
            {"ir_bytes": size, "source": config.source, "openvino": config.openvino},
            f"{size / 1024:.0f} KiB OpenVINO IR from {config.source}",
            extra={"input": ctx.inputs["export"].record["input"]},
        )


class OpenVinoStage(_OpenVinoStage):
    kind, version, source, target = "openvino", 1, "onnx", "openvino"


class OpenVinoInt8Stage(_OpenVinoStage):
    kind, version, source, target = "openvino_int8", 1, "onnx-int8", "openvino-int8"


def _missing() -> str | None:
    return None if installed("openvino") else f"OpenVINO is not installed: {INSTALL_HINT}"


def _loader(kind: str):
    def load(artifacts, *, batch_size: int, threads: int | None):
        compiled = compile_ir(artifacts[kind].file(IR_FILE), threads=threads)
        return lambda images: run_batched(compiled, images, batch_size=batch_size)

    return load


_SHIPPED = {"openvino": "student_openvino", "openvino_int8": "student_openvino_int8"}
_BUDGETS = {
    "openvino": lambda export: export.openvino.max_drop,
    "openvino_int8": lambda export: export.int8.max_drop,
}
for _stage in (OpenVinoStage, OpenVinoInt8Stage):
    _name = _SHIPPED[_stage.kind]
    register_backend(
        Backend(
            _stage.target,
            kind=_stage.kind,
            file=IR_FILE,
            load=_loader(_stage.kind),
            budget=_BUDGETS[_stage.kind],
            requires=lambda export, source=_stage.source: (source,),
            shipped={f"{_name}.xml": IR_FILE, f"{_name}.bin": WEIGHTS_FILE},
            missing=_missing,
            probe=lambda files, out, export, images, source=_stage.source: convert_to_ir(
                files[source], out
            ),
            description=f"OpenVINO IR from {_stage.source}, OpenVINO CPU",
        )
    )
