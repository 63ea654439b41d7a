"""Quantize: INT8 QDQ with ONNX Runtime, calibrated on training images, with the
accuracy-targeted fallback measured on the val split. Registers ``onnx-int8``."""

from __future__ import annotations

import json

import numpy as np
import torch

from cskd.config import Strict
from exports.quantize import Int8Settings, count_qdq, preprocess, quantize_with_fallback
from pipeline.core.backends import Backend, register_backend
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.manifest import Int8Section, Manifest, TrainData
from stages.data import held_out, train_val
from stages.export import ONNX_FILE, onnx_loader

INT8_FILE = "model_int8.onnx"
# The INT8 budget is measured on at most this many val images (a streamed folder's val split
# can be 100,000 images; an in-memory one is used whole).
BUDGET_IMAGES = 10_000


class QuantizeConfig(Strict):
    int8: Int8Section
    data: TrainData  # calibration images from train, the fallback's accuracy on val


class QuantizeStage(Stage):
    kind = "quantize"
    version = 2
    Config = QuantizeConfig
    requires = ("export",)

    @classmethod
    def configure(cls, manifest: Manifest) -> QuantizeConfig | None:
        if "onnx-int8" not in manifest.export.targets:
            return None
        return QuantizeConfig(int8=manifest.export.int8, data=manifest.data.train_view())

    def run(self, config: QuantizeConfig, ctx: StageContext) -> StageResult:
        section = config.int8
        settings = Int8Settings(calibration=section.calibration, activation_type=section.activation_type,
                                per_channel=section.per_channel)
        prepared = preprocess(ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / "model_prepared.onnx")
        train, _ = train_val(config.data)
        val, split_name = held_out(config.data)
        calibration = train.head(section.calibration_images).numpy().astype(np.float32) / 255.0
        budget = val.subset(torch.arange(min(len(val), BUDGET_IMAGES)))  # all of an in-memory val split
        report = quantize_with_fallback(
            prepared, ctx.out_dir / INT8_FILE, calibration_images=calibration, val_images_u8=budget.head(len(budget)).numpy(),
            val_labels=budget.labels.numpy(), settings=settings, budget=section.max_drop, fallback=section.fallback)
        prepared.unlink()
        (ctx.out_dir / "fallback.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
        qdq = count_qdq(ctx.out_dir / INT8_FILE)
        metrics = {"format": "QDQ", "activation_type": section.activation_type, "weight_type": "int8",
                   "per_channel": section.per_channel, "calibration": section.calibration,
                   "calibration_split": "train", "calibration_images": len(calibration), **qdq,
                   "budget_split": split_name, "budget_images": len(budget), "val_fp32_top1": report.fp32_top1, "val_int8_top1": report.int8_top1, "val_drop": report.drop,
                   "kept_float": report.kept_float}
        kept = f", {len(report.kept_float)} node(s) kept in float" if report.kept_float else ""
        return StageResult(metrics, f"{split_name} top-1 {report.int8_top1:.2f} (fp32 {report.fp32_top1:.2f}){kept}",
                           extra={"input": ctx.inputs["export"].record["input"]})


register_backend(Backend("onnx-int8", kind="quantize", file=INT8_FILE, load=onnx_loader("quantize", INT8_FILE),
                         budget_field="export.int8.max_drop", shipped={"student_int8.onnx": INT8_FILE},
                         description="ONNX INT8 QDQ, ONNX Runtime CPU"))
