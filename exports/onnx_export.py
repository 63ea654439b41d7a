"""PyTorch -> ONNX with a dynamic batch axis, checked with ``onnx.checker`` (full check)."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path

import torch
import torch.nn as nn

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, *, sample: torch.Tensor, path: str | Path, opset: int = 18,
                max_batch: int = 4096) -> Path:
    """Export ``model`` (in eval mode, on the CPU) to ``path``.

    Input ``images`` ``[batch, C, H, W]`` float32, output ``logits`` ``[batch, classes]``;
    the batch axis is dynamic (1..``max_batch``). Uses the torch.export-based exporter.
    """
    import onnx

    path = Path(path)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    # The exporter is chatty (progress lines, opset-conversion warnings); keep our output readable.
    quiet = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(quiet),
        _quiet_loggers(),
        _torchlib_registry_once(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (sample.cpu(),),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return path


_REGISTRIES: dict = {}  # opset -> the exporter's table of ONNX functions, built once per process
_REGISTRY_LOCK = threading.Lock()


@contextlib.contextmanager
def _torchlib_registry_once():
    """Build the exporter's ATen -> ONNX function table once per process and opset.

    ``torch.onnx.export`` rebuilds it on every call (0.4 s warm, 0.8 s cold on one core), which is a
    quarter of exporting a small CIFAR student and is paid again for every file of a run, every
    candidate of a search and every run of the test suite. The table is read, never written, when no
    ``custom_translation_table`` is given (our call gives none), so one table can serve every
    export. It is private API: where it is not found, export builds its own as before. Only our call
    sees the shared table (the class is restored after it, under a lock), so a user's export with
    its own translation table in the same process still gets a fresh one.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        registry_class = _registration.ONNXRegistry
        original = registry_class.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def once(cls, opset_version=None):
        key = (cls, opset_version)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = (
                build(cls) if opset_version is None else build(cls, opset_version=opset_version)
            )
        return _REGISTRIES[key]

    with _REGISTRY_LOCK:
        registry_class.from_torchlib = classmethod(once)
        try:
            yield
        finally:
            registry_class.from_torchlib = original


@contextlib.contextmanager
def _quiet_loggers():
    names = [
        "torch.onnx",
        "torch.export",
        "torch._dynamo",
        "torch.fx.experimental.symbolic_shapes",
        "onnxscript",
    ]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
