"""Validate: top-1 of the teacher, the PyTorch student and every exported model on the test split.

This is the only stage that reads the test split. For each export it also
measures agreement with the PyTorch student (top-1, largest logit difference),
and it stores every logit for later analysis.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cskd.checkpoint import save_tensors
from cskd.config import Strict
from cskd.evaluate import predict_logits
from foundation.backends import backend
from foundation.contracts import Stage, StageContext, StageResult
from foundation.manifest import Manifest
from foundation.records import ValidationRecord
from foundation.run_sections import ValidateSection
from stagekit.data import describe, test_split
from stagekit.data_section import TestData
from stagekit.models import WEIGHTS_FILE, load_network
from stagekit.stats import mcnemar, paired_bootstrap, per_class_accuracy, topk


class ValidateRecord(ValidationRecord):
    """Test top-1 of the teacher, the student and each exported model, the paired comparison, and
    each export's agreement with the student."""

    exports: dict  # target -> agreement with the PyTorch student, largest logit difference
    onnx_top1: float | None = None
    onnx_agreement: float | None = None
    teacher_student_agreement: float


PREDICTIONS_FILE = ValidateRecord.PREDICTIONS


class ValidateConfig(Strict):
    teacher_model: str
    student_model: str
    targets: list[str]
    data: TestData
    settings: ValidateSection


class ValidateStage(Stage):
    kind = "validate"
    version = 3
    Config = ValidateConfig
    Record = ValidateRecord

    @classmethod
    def configure(cls, manifest: Manifest) -> ValidateConfig:
        return ValidateConfig(
            teacher_model=manifest.teacher.model,
            student_model=manifest.student.model,
            targets=manifest.export.targets,
            data=manifest.data.test_view(),
            settings=manifest.validate_,
        )

    def inputs(self, config: ValidateConfig) -> tuple[str, ...]:
        return ("teacher", "distill", *(backend(t).kind for t in config.targets))

    def run(self, config: ValidateConfig, ctx: StageContext) -> StageResult:
        test, source, bs = test_split(config.data), config.data.source, config.settings.batch_size
        teacher = load_network(
            config.teacher_model, source, ctx.inputs["teacher"].file(WEIGHTS_FILE)
        )
        student = load_network(
            config.student_model, source, ctx.inputs["distill"].file(WEIGHTS_FILE)
        )
        with _exact_gpu() as device:  # the GPU when there is one: a study validates every cell
            logits = {
                "teacher": predict_logits(
                    teacher.to(device), test, batch_size=bs, device=device
                ).numpy(),
                "student": predict_logits(
                    student.to(device), test, batch_size=bs, device=device
                ).numpy(),
            }
        for target in config.targets:
            run = backend(target).runner(ctx.inputs, batch_size=bs)
            logits[target] = np.concatenate([run(batch.numpy()) for batch in test.batches(bs)])
        labels = test.labels.numpy()
        save_tensors(
            {"labels": test.labels, **{k: torch.from_numpy(v) for k, v in logits.items()}},
            ctx.out_dir / PREDICTIONS_FILE,
        )
        data = {**describe(source), "test_samples": len(test)}
        models = {
            name: summarize(
                out,
                labels,
                teacher=logits["teacher"],
                student=logits["student"],
                num_classes=data["num_classes"],
            )
            for name, out in logits.items()
        }
        correct_s = logits["student"].argmax(1) == labels
        correct_t = logits["teacher"].argmax(1) == labels
        onnx = models["onnx"]
        v = config.settings
        metrics = {
            "split": "test",
            "samples": len(test),
            "num_classes": data["num_classes"],
            "teacher_top1": models["teacher"]["top1"],
            "student_top1": models["student"]["top1"],
            "onnx_top1": onnx["top1"],
            "onnx_agreement": onnx["agreement"],
            "onnx_max_logit_diff": onnx["max_logit_diff"],
            "teacher_student_agreement": models["student"]["teacher_agreement"],
            "models": models,
            "exports": {t: models[t] for t in config.targets},
            "student_vs_teacher": {
                "bootstrap": paired_bootstrap(
                    correct_s, correct_t, seed=v.seed, resamples=v.bootstrap_resamples
                ),
                "mcnemar": mcnemar(correct_s, correct_t),
            },
        }
        others = "".join(f" / {t} {models[t]['top1']:.2f}" for t in config.targets if t != "onnx")
        headline = (
            f"teacher {metrics['teacher_top1']:.2f} / student {metrics['student_top1']:.2f} / "
            f"onnx {onnx['top1']:.2f} (agree {onnx['agreement']:.2f}%){others}"
        )
        return StageResult(metrics, headline, extra={"data": data})


@contextlib.contextmanager
def _exact_gpu():
    """The CUDA device with TF32 off (fp32 logits comparable with ONNX Runtime's), or the CPU."""
    if not torch.cuda.is_available():
        yield torch.device("cpu")
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield torch.device("cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def summarize(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    teacher: np.ndarray,
    student: np.ndarray,
    num_classes: int,
) -> dict:
    """Accuracy and agreement of one model's test logits ``[N, classes]``. An image whose logits are
    not all finite (a broken export computes NaN) has no prediction: it counts as wrong."""
    finite = np.isfinite(logits).all(axis=1)
    pred = np.where(finite, logits.argmax(1), -1)
    agreement = float((pred == student.argmax(1)).mean() * 100.0)
    return {
        "top1": float((pred == labels).mean() * 100.0),
        "top5": topk(logits, labels, 5, valid=finite),
        "per_class": per_class_accuracy(pred, labels, num_classes),
        "teacher_agreement": float((pred == teacher.argmax(1)).mean() * 100.0),
        "agreement": agreement,  # with the FP32 PyTorch student
        "flip_rate": float((pred != student.argmax(1)).mean() * 100.0),
        "max_logit_diff": float(np.abs(logits - student)[finite].max()) if finite.any() else None,
        "nonfinite": int((~finite).sum()),
    }
