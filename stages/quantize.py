"""Quantize: INT8 QDQ with ONNX Runtime, calibrated on training images, with the
accuracy-targeted fallback measured on the val split."""

from __future__ import annotations

import json

import numpy as np

from exports.quantize import Int8Settings, count_qdq, preprocess, quantize_with_fallback
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.export import ONNX_FILE, input_contract

INT8_FILE = "model_int8.onnx"


class QuantizeStage(Stage):
    kind = "quantize"
    version = 1
    inputs = ("export",)

    def enabled(self, manifest: Manifest) -> bool:
        return "onnx-int8" in manifest.export.targets

    def config(self, manifest: Manifest) -> dict:
        return {"int8": dump(manifest.export.int8), "data": dump(manifest.data)}

    def run(self, ctx: StageContext) -> StageResult:
        section = ctx.manifest.export.int8
        settings = Int8Settings(calibration=section.calibration, activation_type=section.activation_type,
                                per_channel=section.per_channel)
        prepared = preprocess(ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / "model_prepared.onnx")
        train, val = ctx.data.train, ctx.data.val
        calibration = train.images[:section.calibration_images].numpy().astype(np.float32) / 255.0
        report = quantize_with_fallback(
            prepared, ctx.out_dir / INT8_FILE, calibration_images=calibration, val_images_u8=val.images.numpy(),
            val_labels=val.labels.numpy(), settings=settings, budget=section.max_drop, fallback=section.fallback)
        prepared.unlink()
        (ctx.out_dir / "fallback.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
        qdq = count_qdq(ctx.out_dir / INT8_FILE)
        metrics = {"format": "QDQ", "activation_type": section.activation_type, "weight_type": "int8",
                   "per_channel": section.per_channel, "calibration": section.calibration,
                   "calibration_split": "train", "calibration_images": len(calibration), **qdq,
                   "val_fp32_top1": report.fp32_top1, "val_int8_top1": report.int8_top1, "val_drop": report.drop,
                   "kept_float": report.kept_float}
        kept = f", {len(report.kept_float)} node(s) kept in float" if report.kept_float else ""
        return StageResult(metrics, f"val top-1 {report.int8_top1:.2f} (fp32 {report.fp32_top1:.2f}){kept}",
                           extra={"input": input_contract(ctx)})
