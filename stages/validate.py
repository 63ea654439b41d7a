"""Validate: top-1 of the teacher, the PyTorch student and every exported model on the test split.

This is the only stage that reads the test split. For each export it also
measures agreement with the PyTorch student (top-1, largest logit difference),
and it stores every logit for later analysis.
"""

from __future__ import annotations

import numpy as np
import torch

from cskd.checkpoint import save_tensors
from cskd.evaluate import predict_logits, top1
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.backends import backend_runners, produced_kinds
from stages.models import WEIGHTS_FILE, load_network

PREDICTIONS_FILE = "predictions.safetensors"


class ValidateStage(Stage):
    kind = "validate"
    version = 2

    def input_kinds(self, manifest: Manifest) -> tuple[str, ...]:
        return ("teacher", "distill", *produced_kinds(manifest))

    def config(self, manifest: Manifest) -> dict:
        return {"data": dump(manifest.data), "validate": dump(manifest.validate_)}

    def run(self, ctx: StageContext) -> StageResult:
        m = ctx.manifest
        test = ctx.data.test
        bs = m.validate_.batch_size
        teacher = load_network(m.teacher.model, ctx.data, ctx.inputs["teacher"].file(WEIGHTS_FILE))
        student = load_network(m.student.model, ctx.data, ctx.inputs["distill"].file(WEIGHTS_FILE))
        t_logits = predict_logits(teacher, test.images, batch_size=bs)
        s_logits = predict_logits(student, test.images, batch_size=bs)
        labels = test.labels
        logits = {"teacher": t_logits, "student": s_logits}
        exports = {}
        for target, run in backend_runners(m, ctx.inputs, batch_size=bs).items():
            out = torch.from_numpy(run(test.images.numpy()))
            logits[target] = out
            exports[target] = {
                "top1": top1(out, labels),
                "agreement": float((out.argmax(1) == s_logits.argmax(1)).double().mean()) * 100,
                "max_logit_diff": float(np.abs((out - s_logits).numpy()).max()),
            }
        save_tensors({"labels": labels, **logits}, ctx.out_dir / PREDICTIONS_FILE)
        onnx = exports["onnx"]
        metrics = {
            "split": "test",
            "samples": len(test),
            "teacher_top1": top1(t_logits, labels),
            "student_top1": top1(s_logits, labels),
            "onnx_top1": onnx["top1"],
            "onnx_agreement": onnx["agreement"],
            "onnx_max_logit_diff": onnx["max_logit_diff"],
            "teacher_student_agreement": float((t_logits.argmax(1) == s_logits.argmax(1)).double().mean()) * 100,
            "exports": exports,
        }
        others = "".join(f" / {t} {v['top1']:.2f}" for t, v in exports.items() if t != "onnx")
        headline = (f"teacher {metrics['teacher_top1']:.2f} / student {metrics['student_top1']:.2f} / "
                    f"onnx {onnx['top1']:.2f} (agree {onnx['agreement']:.2f}%){others}")
        return StageResult(metrics, headline)
