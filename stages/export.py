"""Export: the student as ONNX (dynamic batch, full onnx.checker pass), checked for
parity with PyTorch on real validation batches; and the optional FP16 model."""

from __future__ import annotations

import numpy as np
import torch

from cskd.evaluate import predict_logits
from exports.fp16 import convert_fp16
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import WEIGHTS_FILE, load_network

ONNX_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"
PARITY_SAMPLES = 512


def input_contract(ctx: StageContext, dtype: str = "float32") -> dict:
    ds = ctx.data.dataset
    return {"name": "images", "layout": "NCHW", "dtype": dtype, "range": [0.0, 1.0],
            "shape": ["batch", ds.in_channels, *ds.image_size]}


def parity(model_logits: np.ndarray, reference: np.ndarray) -> dict:
    """Largest absolute logit difference and top-1 agreement (percent) against a reference."""
    return {"max_logit_diff": float(np.abs(model_logits - reference).max()),
            "top1_agreement": float((model_logits.argmax(1) == reference.argmax(1)).mean()) * 100.0}


class ExportStage(Stage):
    kind = "export"
    version = 2
    inputs = ("distill",)

    def config(self, manifest: Manifest) -> dict:
        return {"opset": manifest.export.opset, "model": manifest.student.model, "data": dump(manifest.data)}

    def run(self, ctx: StageContext) -> StageResult:
        model = load_network(ctx.manifest.student.model, ctx.data, ctx.inputs["distill"].file(WEIGHTS_FILE))
        ds = ctx.data.dataset
        sample = torch.zeros(2, ds.in_channels, *ds.image_size)
        path = export_onnx(model, sample=sample, path=ctx.out_dir / ONNX_FILE, opset=ctx.manifest.export.opset)
        # Parity on real validation images (the test split stays untouched until validate).
        val = ctx.data.val.images[:PARITY_SAMPLES]
        check = parity(run_batched(create_session(path), val.numpy()), predict_logits(model, val).numpy())
        metrics = {"onnx_bytes": path.stat().st_size, "opset": ctx.manifest.export.opset,
                   "parity_split": "val", "parity_samples": len(val), **{f"parity_{k}": v for k, v in check.items()}}
        return StageResult(metrics, f"{path.stat().st_size / 1024:.0f} KiB, opset {ctx.manifest.export.opset}, "
                                    f"val parity max |diff| {check['max_logit_diff']:.1e}",
                           extra={"input": input_contract(ctx)})


class Fp16Stage(Stage):
    kind = "export_fp16"
    version = 1
    inputs = ("export",)

    def enabled(self, manifest: Manifest) -> bool:
        return "onnx-fp16" in manifest.export.targets

    def config(self, manifest: Manifest) -> dict:
        return {"keep_io_types": True}

    def run(self, ctx: StageContext) -> StageResult:
        path = convert_fp16(ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / FP16_FILE)
        return StageResult({"onnx_bytes": path.stat().st_size, "io_types": "float32", "compute": "float16"},
                           f"{path.stat().st_size / 1024:.0f} KiB, fp16 inside, fp32 inputs/outputs",
                           extra={"input": input_contract(ctx)})
