"""Export: the student as ONNX (dynamic batch, full onnx.checker pass)."""

from __future__ import annotations

import torch

from exports.onnx_export import export_onnx
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import WEIGHTS_FILE, load_network

ONNX_FILE = "model.onnx"


class ExportStage(Stage):
    kind = "export"
    version = 1
    inputs = ("distill",)

    def config(self, manifest: Manifest) -> dict:
        return {"export": dump(manifest.export), "model": manifest.student.model}

    def run(self, ctx: StageContext) -> StageResult:
        model = load_network(ctx.manifest.student.model, ctx.data, ctx.inputs["distill"].file(WEIGHTS_FILE))
        ds = ctx.data.dataset
        sample = torch.zeros(2, ds.in_channels, *ds.image_size)
        path = export_onnx(model, sample=sample, path=ctx.out_dir / ONNX_FILE, opset=ctx.manifest.export.opset)
        size_kb = path.stat().st_size / 1024
        return StageResult({"onnx_bytes": path.stat().st_size, "opset": ctx.manifest.export.opset},
                           f"{size_kb:.0f} KiB, opset {ctx.manifest.export.opset}",
                           extra={"input": {"name": "images", "layout": "NCHW", "dtype": "float32",
                                            "range": [0.0, 1.0], "shape": ["batch", ds.in_channels, *ds.image_size]}})
