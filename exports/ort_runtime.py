"""ONNX Runtime sessions and batched inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def create_session(
    path: str | Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    optimize: bool = True,
):
    """An InferenceSession on the given providers (default: CPU only, for reproducible numbers).
    ``optimize=False`` runs the graph as written (a QDQ model as float Quantize/Dequantize
    arithmetic, without the integer kernels ONNX Runtime fuses it into)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )


def run_batched(session, images_u8: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits ``[N, classes]`` float32 for uint8 images ``[N, C, H, W]`` (scaled to [0, 1] here)."""
    name = session.get_inputs()[0].name
    input_type = session.get_inputs()[0].type
    dtype = np.float16 if "float16" in input_type else np.float32
    outputs = []
    for start in range(0, images_u8.shape[0], batch_size):
        batch = (images_u8[start : start + batch_size].astype(np.float32) / 255.0).astype(dtype)
        outputs.append(session.run(None, {name: batch})[0].astype(np.float32))
    return np.concatenate(outputs)
