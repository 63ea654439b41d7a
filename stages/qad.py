"""Quantization-aware distillation (QAD), a stage of its own: fine-tune the student with
simulated INT8 (``cskd.quant``) against a frozen teacher with a distillation loss, and hand the
quantize stage the fine-tuned float model and the activation ranges it trained with.

Its id covers the student and teacher it reads, its training settings and the calibration, not
the INT8 budget: editing ``export.int8.max_drop`` retrains nothing. With ``qad.when: on_drop``
(the default) it runs on demand, when the quantize stage finds that post-training INT8 misses
its budget; with ``always``, before the quantize stage.

Activation ranges are fixed: ONNX Runtime's own calibration of the student before QAD, on the
same training images the export calibrates on. The export then quantizes the fine-tuned
weights with exactly those ranges (pinned), so the shipped model is the model trained.
(Re-taking ONNX Runtime's calibration of the float weights after each epoch does not work:
the float activations of weights trained under quantization drift away from the quantized
ones, and the ranges measured on them broke a MobileNetV2 in its second epoch, 73% -> 10%.)
The simulated model's logits are compared with the QDQ model's on held-out images, before
training (QAD is skipped when they disagree: ``check_simulation``) and after.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cskd.config import Strict, TrainConfig
from cskd.engine import train
from cskd.evaluate import predict_logits
from cskd.loss_registry import LOSS_PRESETS, build_objective
from cskd.quant import float_model
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from exports.quantize import (
    Int8Settings,
    activation_params,
    add_outputs,
    pinned_ranges,
)
from foundation.contracts import NOT_IN_ID, Stage, StageContext, StageResult
from foundation.manifest import Manifest
from stagekit.data import held_out, train_val
from stagekit.data_section import TrainData
from stagekit.int8_settings import calibration_images, int8_settings, resolved_int8
from stagekit.model_sections import LossField
from stagekit.models import WEIGHTS_FILE, load_network
from stagekit.qad_handoff import (
    FLOAT_FILE,
    PARITY_IMAGES,
    PINNED_FILE,
    SimulationMismatch,
    calibrated,
    check_simulation,
    logit_agreement,
    quantized,
    simulation,
)


class QadConfig(Strict):
    """What QAD computes (its id, with the distill and teacher ids): the training settings, the
    networks, the calibration whose ranges it trains with, and the data."""

    epochs: int
    lr: float
    loss: LossField  # resolved: the student's own for loss: inherit
    teacher: Literal["teacher", "fp32-student"]
    student_model: str
    teacher_model: str  # the network the teacher weights belong to (the student's for fp32-student)
    batch_size: int
    augment: dict
    seed: int
    opset: int
    calibration: Int8Settings  # the id's key for it stays 'calibration'
    data: TrainData
    # on_drop: run when the quantize stage asks; always: in the plan's order. Not what QAD computes.
    on_demand: bool = Field(json_schema_extra={NOT_IN_ID: True})


@dataclass
class QadResult:
    float_onnx: Path  # the fine-tuned student, BatchNorm folded, in float: what is quantized
    pinned: dict  # tensor name -> the activation range it trained with; the export keeps them
    epochs: int
    history: list[dict] = field(default_factory=list)
    parity: dict = field(default_factory=dict)


def run_qad(
    plan: QadConfig,
    *,
    inputs,
    calibration: np.ndarray,
    settings: Int8Settings,
    work_dir: Path,
    out_dir: Path,
    progress,
    log,
) -> QadResult:
    data = plan.data
    source = data.source
    student = load_network(plan.student_model, source, inputs["distill"].file(WEIGHTS_FILE)).eval()
    teacher_file = inputs["teacher" if plan.teacher == "teacher" else "distill"].file(WEIGHTS_FILE)
    teacher = load_network(plan.teacher_model, source, teacher_file).eval()
    sim = simulation(student, settings)
    train_split, _ = train_val(data)
    val, _ = held_out(data)
    sample = torch.zeros(2, *val.sample_shape)
    config = TrainConfig(
        epochs=plan.epochs,
        lr=plan.lr,
        batch_size=plan.batch_size,
        schedule="cosine",
        augment=plan.augment,
        seed=plan.seed,
        checkpoint_every=1,
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        # The student's ranges before QAD (a resumed run recomputes the same ones: same weights,
        # same images).
        qdq = calibrated(
            sim,
            calibration=calibration,
            settings=settings,
            opset=plan.opset,
            sample_shape=tuple(val.sample_shape),
            folder=folder,
        )
        pinned = pinned_ranges(activation_params(qdq), add_outputs(qdq))
        images = val.head(PARITY_IMAGES)
        before_training = check_simulation(sim, qdq, images)

        def report(metrics: dict) -> None:
            top1 = metrics["val_top1"] if metrics["val_top1"] is not None else float("nan")
            log(
                f"[qad] epoch {metrics['epoch']}/{plan.epochs}: loss {metrics['loss']:.4f}, "
                f"simulated INT8 val top-1 {top1:.2f}"
            )

        objective = build_objective(plan.loss, sim, teacher)
        last = train(
            objective,
            train_split,
            val,
            config,
            work_dir=work_dir,
            metrics_path=out_dir / "qad_metrics.jsonl",
            progress=progress,
            label="[qad]",
            on_epoch=report,
        )
        sim.eval()
        float_onnx = export_onnx(
            float_model(sim).cpu(), sample=sample, path=out_dir / FLOAT_FILE, opset=plan.opset
        )
        # Parity: the simulated model against ONNX Runtime's QDQ model of the same weights and
        # ranges.
        qdq = quantized(
            sim,
            float_onnx,
            calibration=calibration,
            settings=settings,
            folder=folder,
            pinned=pinned,
        )
        simulated = predict_logits(sim, images).numpy()
        parity = {
            "images": len(images),
            "before_training": before_training,
            # the QDQ graph as written (float Quantize/Dequantize arithmetic): what the
            # simulation models
            "graph": logit_agreement(
                simulated, run_batched(create_session(qdq, optimize=False), images.numpy())
            ),
            # ONNX Runtime's integer kernels on this CPU: what ships (equal to the graph
            # unless the
            # CPU saturates uint8 x int8 sums: see int8.reduce_range)
            "runtime": logit_agreement(simulated, run_batched(create_session(qdq), images.numpy())),
        }
    return QadResult(float_onnx, pinned, plan.epochs, [last], parity)


class QadStage(Stage):
    kind = "qad"
    version = 1
    Config = QadConfig

    @classmethod
    def configure(cls, manifest: Manifest) -> QadConfig | None:
        export = manifest.export
        section = export.int8.qad
        if "onnx-int8" not in export.targets or section.when == "never":
            return None
        int8, s = resolved_int8(export), manifest.student
        loss = (
            s.loss.for_pair(manifest.teacher.model, s.model)
            if section.loss == "inherit"
            else LOSS_PRESETS[section.loss]
        )
        # Under operators: auto QAD trains weighted, the operators the simulation models exactly
        # on every network it can trace (auto picks all only where calibration alone holds the
        # budget).
        operators = "weighted" if int8.operators == "auto" else int8.operators
        return QadConfig(
            epochs=section.epochs,
            lr=section.lr,
            loss=loss,
            teacher=section.teacher,
            student_model=s.model,
            teacher_model=manifest.teacher.model if section.teacher == "teacher" else s.model,
            batch_size=s.train.batch_size,
            augment=s.train.augment.model_dump(),
            seed=s.train.seed,
            opset=export.opset,
            calibration=int8_settings(int8, operators=operators),
            data=manifest.data.train_view(),
            on_demand=section.when == "on_drop",
        )

    def inputs(self, config: QadConfig) -> tuple[str, ...]:
        return ("distill", "teacher") if config.teacher == "teacher" else ("distill",)

    def on_demand(self, config: QadConfig) -> bool:
        return config.on_demand

    def run(self, config: QadConfig, ctx: StageContext) -> StageResult:
        settings = config.calibration
        calibration = calibration_images(config.data, config.calibration.images)
        try:
            qad = run_qad(
                config,
                inputs=ctx.inputs,
                calibration=calibration,
                settings=settings,
                work_dir=ctx.work_dir,
                out_dir=ctx.out_dir,
                progress=ctx.progress,
                log=ctx.log,
            )
        # train nothing that would not ship; the quantize stage falls back
        except SimulationMismatch as exc:
            return StageResult(
                {"skipped": str(exc), "operators": settings.operators}, f"skipped: {exc}"
            )
        (ctx.out_dir / PINNED_FILE).write_text(json.dumps(qad.pinned, indent=1) + "\n")
        top1 = qad.history[-1].get("val_top1")
        metrics = {
            "skipped": None,
            "operators": settings.operators,
            "epochs": qad.epochs,
            "loss": config.loss.kind,
            "teacher": config.teacher,
            "simulated_val_top1": top1,
            "parity": qad.parity,
        }
        agreement = qad.parity["graph"]["top1_agreement"]
        return StageResult(
            metrics,
            f"{qad.epochs} epoch(s), simulated INT8 val top-1 "
            f"{float('nan') if top1 is None else top1:.2f}, QDQ agreement {agreement:.1f}%",
        )
