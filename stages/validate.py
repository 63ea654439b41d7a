"""Validate: top-1 of teacher, PyTorch student and ONNX student on the test split.

This is the only stage that reads the test split. It also measures how well the
ONNX model reproduces the PyTorch student (top-1 agreement, largest logit
difference) and stores every logit for later analysis.
"""

from __future__ import annotations

import numpy as np
import torch

from cskd.checkpoint import save_tensors
from cskd.evaluate import predict_logits, top1
from exports.ort_runtime import create_session, run_batched
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.export import ONNX_FILE
from stages.models import WEIGHTS_FILE, load_network

PREDICTIONS_FILE = "predictions.safetensors"


class ValidateStage(Stage):
    kind = "validate"
    version = 1
    inputs = ("teacher", "distill", "export")

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
        session = create_session(ctx.inputs["export"].file(ONNX_FILE))
        o_logits = torch.from_numpy(run_batched(session, test.images.numpy(), batch_size=bs))
        save_tensors({"labels": test.labels, "teacher": t_logits, "student": s_logits, "onnx": o_logits},
                     ctx.out_dir / PREDICTIONS_FILE)
        agree = float((o_logits.argmax(1) == s_logits.argmax(1)).double().mean()) * 100
        metrics = {
            "split": "test",
            "samples": len(test),
            "teacher_top1": top1(t_logits, test.labels),
            "student_top1": top1(s_logits, test.labels),
            "onnx_top1": top1(o_logits, test.labels),
            "onnx_agreement": agree,
            "onnx_max_logit_diff": float(np.abs((o_logits - s_logits).numpy()).max()),
            "teacher_student_agreement": float((t_logits.argmax(1) == s_logits.argmax(1)).double().mean()) * 100,
        }
        headline = (f"teacher {metrics['teacher_top1']:.2f} / student {metrics['student_top1']:.2f} / "
                    f"onnx {metrics['onnx_top1']:.2f} (agree {agree:.2f}%)")
        return StageResult(metrics, headline)
