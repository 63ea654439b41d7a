"""PyTorch -> ONNX with a dynamic batch axis, checked with ``onnx.checker`` (full check)."""

from __future__ import annotations

import contextlib
import io
import logging
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
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (sample.cpu(),), dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), verbose=False,
        )
        program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return path


@contextlib.contextmanager
def _quiet_loggers():
    names = ["torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes", "onnxscript"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
