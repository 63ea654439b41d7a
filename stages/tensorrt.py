"""TensorRT: an engine built from one of the ONNX models (its precision is the engine's)."""

from __future__ import annotations

from exports.tensorrt import EngineSpec, build_engine, require_tensorrt
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.environment import environment
from pipeline.manifest import Manifest
from stages.export import FP16_FILE, ONNX_FILE
from stages.quantize import INT8_FILE

ENGINE_FILE = "model.engine"
ENGINE_META_FILE = "model.json"  # written by build_engine beside the engine: ONNX hash, TensorRT version, GPU
# target name -> (stage kind, file in that artifact)
SOURCES = {"onnx": ("export", ONNX_FILE), "onnx-fp16": ("export_fp16", FP16_FILE), "onnx-int8": ("quantize", INT8_FILE)}


class TensorRTStage(Stage):
    kind = "tensorrt"
    version = 1

    def enabled(self, manifest: Manifest) -> bool:
        return "trt" in manifest.export.targets

    def input_kinds(self, manifest: Manifest) -> tuple[str, ...]:
        return ("export", SOURCES[manifest.export.trt.source][0]) if manifest.export.trt.source != "onnx" else ("export",)

    def preflight(self, manifest: Manifest) -> None:
        require_tensorrt()

    def config(self, manifest: Manifest) -> dict:
        # An engine is only valid for the TensorRT version and GPU it was built with.
        env = environment()
        return {"trt": dump(manifest.export.trt), "tensorrt": env["tensorrt"], "device": env["device"]}

    def run(self, ctx: StageContext) -> StageResult:
        section = ctx.manifest.export.trt
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        kind, name = SOURCES[section.source]
        spec = EngineSpec(section.min_batch, section.opt_batch, section.max_batch, section.workspace_mib)
        meta = build_engine(ctx.inputs[kind].file(name), ctx.out_dir / ENGINE_FILE, spec=spec,
                            timing_cache=ctx.cache_dir / "trt-timing.cache")
        return StageResult({"source": section.source, **meta}, f"{section.source} engine for {meta['gpu']}")
