"""TensorRT: an engine built from one of the ONNX models (its precision is the engine's).
Registers the ``trt`` target (GPU only)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from cskd.config import Strict
from exports.tensorrt import INSTALL_HINT, EngineSpec, build_engine, require_tensorrt
from pipeline.core.backends import Backend, backend, installed, register_backend
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.environment import environment
from pipeline.core.files import sha256_file
from pipeline.core.manifest import Manifest

ENGINE_FILE = "model.engine"
ENGINE_META_FILE = "model.json"  # written by build_engine beside the engine: ONNX hash, TensorRT version, GPU


class TensorRTConfig(Strict):
    source: Literal["onnx", "onnx-fp16", "onnx-int8"]
    spec: dict
    tensorrt: str | None  # an engine is only valid for the TensorRT version and GPU it was built with
    device: str


class TensorRTStage(Stage):
    kind = "tensorrt"
    version = 2
    Config = TensorRTConfig

    @classmethod
    def configure(cls, manifest: Manifest) -> TensorRTConfig | None:
        if "trt" not in manifest.export.targets:
            return None
        trt, env = manifest.export.trt, environment()
        spec = EngineSpec(trt.min_batch, trt.opt_batch, trt.max_batch, trt.workspace_mib)
        return TensorRTConfig(source=trt.source, spec=spec.__dict__, tensorrt=env["tensorrt"], device=env["device"])

    def inputs(self, config: TensorRTConfig) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("export", backend(config.source).kind)))

    def preflight(self, config: TensorRTConfig) -> None:
        require_tensorrt()

    def run(self, config: TensorRTConfig, ctx: StageContext) -> StageResult:
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        source = backend(config.source)
        onnx = ctx.inputs[source.kind].file(source.file)
        meta = build_engine(onnx, ctx.out_dir / ENGINE_FILE, onnx_sha256=sha256_file(onnx),
                            spec=EngineSpec(**config.spec), timing_cache=ctx.cache_dir / "trt-timing.cache")
        return StageResult({"source": config.source, **meta}, f"{config.source} engine for {meta['gpu']}")


def _missing() -> str | None:
    return None if installed("tensorrt") else f"TensorRT is not installed: {INSTALL_HINT}"


def _load(artifacts, *, batch_size: int, threads: int | None):
    import torch

    from exports.tensorrt import TrtRunner

    source = backend(artifacts["tensorrt"].metrics["source"])
    runner = TrtRunner(artifacts["tensorrt"].file(ENGINE_FILE),
                       onnx_sha256=sha256_file(artifacts[source.kind].file(source.file)))

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).cuda().float() / 255.0
            out.append(runner(batch).cpu().numpy())
        return np.concatenate(out)

    return run


register_backend(Backend("trt", kind="tensorrt", file=ENGINE_FILE, load=_load, budget_field="export.trt.max_drop",
                         shipped={"student.engine": ENGINE_FILE, "student.json": ENGINE_META_FILE}, device="cuda",
                         auto_device="cuda", missing=_missing,
                         description="TensorRT engine (NVIDIA GPU)"))
