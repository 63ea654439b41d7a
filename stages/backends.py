"""The exported models a run produced, as runnable back-ends keyed by target name."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exports.ort_runtime import create_session, run_batched
from pipeline.manifest import Manifest
from pipeline.store import Artifact
from stages.export import FP16_FILE, ONNX_FILE
from stages.quantize import INT8_FILE
from stages.tensorrt import ENGINE_FILE

# ONNX target -> (stage kind, file)
ONNX_TARGETS = {"onnx": ("export", ONNX_FILE), "onnx-fp16": ("export_fp16", FP16_FILE),
                "onnx-int8": ("quantize", INT8_FILE)}
TARGET_KINDS = {**{t: k for t, (k, _) in ONNX_TARGETS.items()}, "trt": "tensorrt"}


def produced_kinds(manifest: Manifest) -> tuple[str, ...]:
    return tuple(TARGET_KINDS[t] for t in manifest.export.targets)


def backend_runners(manifest: Manifest, inputs: dict[str, Artifact], *, batch_size: int = 256,
                    threads: int | None = None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """target -> function(uint8 images [N, C, H, W]) -> float32 logits [N, classes]."""
    runners = {}
    for target in manifest.export.targets:
        if target in ONNX_TARGETS:
            kind, name = ONNX_TARGETS[target]
            session = create_session(inputs[kind].file(name), threads=threads)
            runners[target] = lambda x, s=session: run_batched(s, x, batch_size=batch_size)
        elif target == "trt":
            runners[target] = _trt_runner(inputs, batch_size)
    return runners


def _trt_runner(inputs: dict[str, Artifact], batch_size: int):
    import torch

    from exports.tensorrt import TrtRunner
    from stages.tensorrt import SOURCES

    source = inputs["tensorrt"].record["metrics"]["source"]
    kind, name = SOURCES[source]
    runner = TrtRunner(inputs["tensorrt"].file(ENGINE_FILE), onnx_path=inputs[kind].file(name))

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).cuda().float() / 255.0
            out.append(runner(batch).cpu().numpy())
        return np.concatenate(out)

    return run
