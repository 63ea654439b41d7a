"""TensorRT: an engine built from one of the ONNX models (its precision is the engine's).
Registers the ``trt`` target (GPU only)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cskd.config import Strict
from exports.tensorrt import INSTALL_HINT, EngineSpec, build_engine, require_tensorrt
from foundation.backends import (
    Backend,
    backend,
    installed,
    register_backend,
)
from foundation.contracts import Stage, StageContext, StageResult
from foundation.environment import environment
from foundation.files import sha256_file
from foundation.manifest import Manifest
from foundation.sections import EXPORT_SETTINGS

ENGINE_FILE = "model.engine"
# written by build_engine beside the engine: ONNX hash, TensorRT version, GPU
ENGINE_META_FILE = "model.json"


class TrtSection(Strict):
    source: Literal["onnx", "onnx-fp16", "onnx-int8"] = Field(
        "onnx-fp16",
        description="which ONNX model the engine is built from; its precision is the engine's",
    )
    min_batch: int = Field(1, ge=1, le=65_536)
    opt_batch: int = Field(64, ge=1, le=65_536)
    max_batch: int = Field(256, ge=1, le=65_536)
    workspace_mib: int = Field(1024, ge=16, le=1 << 20)
    max_drop: float = Field(
        0.5, ge=0, le=100, description="top-1 points the engine may lose against FP32"
    )

    @model_validator(mode="after")
    def _batches(self) -> TrtSection:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("need min_batch <= opt_batch <= max_batch")
        return self


class TensorRTConfig(Strict):
    source: Literal["onnx", "onnx-fp16", "onnx-int8"]
    spec: dict
    # an engine is only valid for the TensorRT version and GPU it was built with
    tensorrt: str | None
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
        return TensorRTConfig(
            source=trt.source, spec=spec.__dict__, tensorrt=env["tensorrt"], device=env["device"]
        )

    def inputs(self, config: TensorRTConfig) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("export", backend(config.source).kind)))

    def preflight(self, config: TensorRTConfig) -> None:
        require_tensorrt()

    def run(self, config: TensorRTConfig, ctx: StageContext) -> StageResult:
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        source = backend(config.source)
        onnx = ctx.inputs[source.kind].file(source.file)
        meta = build_engine(
            onnx,
            ctx.out_dir / ENGINE_FILE,
            onnx_sha256=sha256_file(onnx),
            spec=EngineSpec(**config.spec),
            timing_cache=ctx.cache_dir / "trt-timing.cache",
        )
        return StageResult(
            {"source": config.source, **meta}, f"{config.source} engine for {meta['gpu']}"
        )


def _missing() -> str | None:
    return None if installed("tensorrt") else f"TensorRT is not installed: {INSTALL_HINT}"


def _load(artifacts, *, batch_size: int, threads: int | None):
    import torch

    from exports.tensorrt import TrtRunner

    source = backend(artifacts["tensorrt"].metrics["source"])
    runner = TrtRunner(
        artifacts["tensorrt"].file(ENGINE_FILE),
        onnx_sha256=sha256_file(artifacts[source.kind].file(source.file)),
    )

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).cuda().float() / 255.0
            out.append(runner(batch).cpu().numpy())
        return np.concatenate(out)

    return run


def _int8_activations(export) -> str | None:
    if export.trt.source == "onnx-int8" and export.int8.activation_type != "int8":
        return "a TensorRT engine from INT8 needs int8.activation_type: int8 (symmetric)"
    return None


EXPORT_SETTINGS.register(
    "trt", TrtSection, Field(TrtSection(), description="the TensorRT engine (target trt)")
)
register_backend(
    Backend(
        "trt",
        kind="tensorrt",
        file=ENGINE_FILE,
        load=_load,
        budget=lambda export: export.trt.max_drop,
        requires=lambda export: (export.trt.source,),
        check=_int8_activations,
        shipped={"student.engine": ENGINE_FILE, "student.json": ENGINE_META_FILE},
        device="cuda",
        auto_device="cuda",
        missing=_missing,
        description="TensorRT engine (NVIDIA GPU)",
    )
)
