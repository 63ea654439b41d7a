"""OpenVINO: ONNX -> OpenVINO IR (``.xml`` + ``.bin``) and CPU inference.

The IR keeps the source model's precision: an FP32 ONNX file gives an FP32 IR
(weights are not compressed to FP16, inference precision is pinned to f32, so
a CPU with bf16 units does not silently change the numbers), and a QDQ ONNX
file gives an INT8 IR that OpenVINO runs with its own INT8 kernels.
``openvino`` is an optional extra (``pip install 'cskd-pipeline[openvino]'``),
imported only inside these functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exports.errors import BackendUnavailable

INSTALL_HINT = "pip install 'cskd-pipeline[openvino]'"


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(
            f"OpenVINO is not installed (no module 'openvino'); {INSTALL_HINT}"
        ) from None
    return openvino


def convert_to_ir(onnx_path: Path, xml_path: Path) -> Path:
    """Write ``xml_path`` and its ``.bin`` beside it; returns the ``.xml`` path."""
    ov = require_openvino()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def compile_ir(xml_path: Path, *, threads: int | None = None):
    """A compiled model on the CPU (latency hint, f32 inference precision)."""
    ov = require_openvino()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(xml_path), "CPU", config)


def run_batched(compiled, images_u8: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits ``[N, classes]`` float32 for uint8 images ``[N, C, H, W]`` (scaled to [0, 1] here)."""
    request = compiled.create_infer_request()
    outputs = []
    for start in range(0, images_u8.shape[0], batch_size):
        batch = images_u8[start : start + batch_size].astype(np.float32) / 255.0
        outputs.append(np.array(request.infer({0: batch})[0], dtype=np.float32, copy=True))
    return np.concatenate(outputs)
