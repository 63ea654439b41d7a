"""The export stage's ONNX file, and how a back-end whose artifact is an ONNX file is loaded: the
export, FP16 and INT8 stages (and back-end plug-ins) share them."""

from __future__ import annotations

from exports.ort_runtime import create_session, run_batched

ONNX_FILE = "model.onnx"


def onnx_loader(kind: str, file: str):
    """A ``Backend.load`` for an ONNX model in artifact ``kind``, run by ONNX Runtime on the CPU."""

    def load(artifacts, *, batch_size: int, threads: int | None):
        session = create_session(artifacts[kind].file(file), threads=threads)
        return lambda images: run_batched(session, images, batch_size=batch_size)

    return load
