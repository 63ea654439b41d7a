"""Quantize: INT8 QDQ with ONNX Runtime, calibrated on training images. When INT8 loses more
val top-1 than ``int8.max_drop``: the QAD stage's fine-tuned student (stages/qad.py, asked for
only then unless ``qad.when: always``), then, as the last resort, the fallback that keeps the
most sensitive nodes in float. Registers ``onnx-int8``; the settings are in
stagekit/int8_settings.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cskd.config import Strict
from exports.int8_fallback import quantize_with_fallback
from exports.quantize import (
    count_qdq,
    preprocess,
    quantize_int8,
    runtime_agreement,
)
from foundation.backends import Backend, register_backend
from foundation.contracts import Stage, StageContext, StageResult
from foundation.manifest import Manifest
from foundation.records import QuantizationRecord
from stagekit.data import held_out
from stagekit.data_section import TrainData
from stagekit.int8_settings import (
    Int8Section,
    calibration_images,
    cpu_check,
    cpu_class,
    int8_settings,
    resolved_int8,
)
from stagekit.models import WEIGHTS_FILE, load_network
from stagekit.onnx_files import ONNX_FILE, onnx_loader
from stagekit.qad_handoff import (
    FLOAT_FILE,
    PARITY_IMAGES,
    PINNED_FILE,
    choose_operators,
)

INT8_FILE = "model_int8.onnx"
# The INT8 budget is measured on at most this many val images (a streamed folder's val split
# can be 100,000 images; an in-memory one is used whole).
BUDGET_IMAGES = 10_000


class QuantizeConfig(Strict):
    int8: Int8Section  # reduce_range resolved from export.cpu
    # the CPU class the INT8 model is validated for (export.cpu resolved)
    cpu: Literal["vnni", "avx2", "any"]
    data: TrainData  # calibration images from train, the fallback's accuracy on val
    student_model: str  # operators: auto checks the QAD simulation of this network
    opset: int


class QuantizeRecord(QuantizationRecord):
    """The INT8 model's budget check (split, images, FP32 and INT8 top-1, the drop after calibration
    and after QAD and the fallback), its operators and why, the CPU class it was checked for."""

    val_fp32_top1: float
    val_int8_top1: float
    ptq_drop: float
    kept_float: list[str]
    # the QAD stage's run, when it was used: its artifact, epochs, loss, parity
    qad: dict | None = None
    qad_skipped: str | None = None
    cpu: dict


class QuantizeStage(Stage):
    kind = "quantize"
    # 3: QAD before the float fallback; 4: QAD keeps the ranges it trained with;
    # 5: operators auto, reduce_range and the budget's kernels follow export.cpu; 6: QAD is a stage
    # of its own
    version = 6
    Config = QuantizeConfig
    Record = QuantizeRecord
    requires = ("export",)

    @classmethod
    def configure(cls, manifest: Manifest) -> QuantizeConfig | None:
        export = manifest.export
        if "onnx-int8" not in export.targets:
            return None
        return QuantizeConfig(
            int8=resolved_int8(export),
            cpu=cpu_class(export),
            data=manifest.data.train_view(),
            student_model=manifest.student.model,
            opset=export.opset,
        )

    def inputs(self, config: QuantizeConfig) -> tuple[str, ...]:
        # The QAD stage's id covers its settings; the section's `when` is read here, from the
        # config.
        qad = ("qad",) if config.int8.qad.when != "never" else ()
        return ("export", *qad, "distill") if config.int8.operators == "auto" else ("export", *qad)

    def run(self, config: QuantizeConfig, ctx: StageContext) -> StageResult:
        section, when = config.int8, config.int8.qad.when
        check = cpu_check(config.cpu, reduce_range=section.reduce_range)
        # With QAD always, auto means weighted: what QAD trains under auto (stages/qad.py)
        operators = (
            "weighted" if section.operators == "auto" and when == "always" else section.operators
        )
        # the same settings the QAD stage calibrated with (its pinned ranges must fit them)
        settings = int8_settings(section, operators="all" if operators == "auto" else operators)
        prepared = preprocess(
            ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / "model_prepared.onnx"
        )
        val, split_name = held_out(config.data)
        calibration = calibration_images(config.data, section.calibration_images)
        # all of an in-memory val split
        budget = val.subset(torch.arange(min(len(val), BUDGET_IMAGES)))
        args = {
            "calibration_images": calibration,
            "val_images_u8": budget.head(len(budget)).numpy(),
            "val_labels": budget.labels.numpy(),
            "settings": settings,
            "budget": section.max_drop,
            "fallback": section.fallback,
            "exact_graph": check["exact_graph"],
        }
        report = quantize_with_fallback(
            prepared,
            ctx.out_dir / INT8_FILE,
            **args,
            stop_after_ptq=when != "never" or operators == "auto",
        )
        choice = None
        if operators == "auto":
            distilled = ctx.inputs["distill"].file(WEIGHTS_FILE)
            choice = choose_operators(
                config.int8.max_drop, report.drop,
                lambda: load_network(config.student_model, config.data.source, distilled),
                images=val.head(PARITY_IMAGES), calibration=calibration, settings=settings,
                opset=config.opset)
            if choice["chosen"] == "weighted":
                args["settings"] = settings = settings.model_copy(update={"operators": "weighted"})
                report = quantize_with_fallback(
                    prepared, ctx.out_dir / INT8_FILE, **args, stop_after_ptq=when != "never"
                )
        ptq_drop, qad, qad_skipped = report.drop, None, None
        if when == "always" or (when == "on_drop" and report.drop > section.max_drop):
            ctx.log(
                f"[qad] INT8 after calibration loses {report.drop:.2f} points of {split_name} "
                f"top-1 (budget {section.max_drop}, qad.when: {when}): quantization-aware "
                "distillation"
            )
            qad = ctx.inputs["qad"]  # on demand: trained now unless its artifact is in the store
            if qad.metrics["skipped"]:  # nothing trained that would not ship; the fallback follows
                qad, qad_skipped = None, qad.metrics["skipped"]
                ctx.log(f"[qad] warning: skipped: {qad_skipped}")
        if qad is not None:  # the fine-tuned student, quantized with the ranges it trained with
            args["settings"] = settings = settings.model_copy(
                update={"operators": qad.metrics["operators"]}
            )
            qad_prepared = preprocess(qad.file(FLOAT_FILE), ctx.out_dir / "qad_prepared.onnx")
            report = quantize_with_fallback(
                qad_prepared,
                ctx.out_dir / INT8_FILE,
                **args,
                reference_top1=report.fp32_top1,
                pinned=json.loads(qad.file(PINNED_FILE).read_text()),
            )
            qad_prepared.unlink()
        # QAD off or skipped: the fallback on the calibrated model
        elif report.drop > section.max_drop:
            report = quantize_with_fallback(prepared, ctx.out_dir / INT8_FILE, **args)
        prepared.unlink()
        (ctx.out_dir / "fallback.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
        runtime = _runtime_check(ctx, args["val_images_u8"], split_name, check)
        metrics = {
            "format": "QDQ",
            "activation_type": section.activation_type,
            "weight_type": "int8",
            "per_channel": section.per_channel,
            "calibration": section.calibration,
            "calibration_split": "train",
            "calibration_images": len(calibration),
            **count_qdq(ctx.out_dir / INT8_FILE),
            "budget_split": split_name,
            "budget_images": len(budget),
            "val_fp32_top1": report.fp32_top1,
            "val_int8_top1": report.int8_top1,
            "val_drop": report.drop,
            "kept_float": report.kept_float,
            "ptq_drop": ptq_drop,
            "reduce_range": section.reduce_range,
            "operators": settings.operators,
            "operators_choice": choice,
            "cpu": check,
            "runtime_vs_graph": runtime,
            "qad_skipped": qad_skipped,
            "qad": None
            if qad is None
            else {
                "artifact": qad.id,
                **{k: qad.metrics[k] for k in ("epochs", "loss", "teacher", "parity")},
                # before any node is kept in float
                "drop": report.fp32_top1 - report.attempts[0]["top1"],
                "simulated_val_top1": qad.metrics["simulated_val_top1"],
            },
        }
        kept = f", {len(report.kept_float)} node(s) kept in float" if report.kept_float else ""
        kept += f", after QAD (calibration alone lost {ptq_drop:.2f})" if qad is not None else ""
        return StageResult(
            metrics,
            f"{split_name} top-1 {report.int8_top1:.2f} (fp32 {report.fp32_top1:.2f}), "
            f"operators {settings.operators}, {config.cpu} CPUs{kept}",
            extra={"input": ctx.inputs["export"].record["input"]},
        )


def _runtime_check(ctx: StageContext, images: np.ndarray, split_name: str, check: dict) -> dict:
    """ONNX Runtime's integer kernels on this CPU against the QDQ graph, warning when they differ
    or when the budget was not checked on the deployment CPU's kernels."""
    runtime = runtime_agreement(ctx.out_dir / INT8_FILE, images)
    if runtime["top1_agreement"] < 100.0:
        ctx.log(
            "[quantize] warning: ONNX Runtime's integer kernels on this CPU disagree with the "
            f"QDQ graph on {100 - runtime['top1_agreement']:.2f}% of {split_name} images (uint8 x "
            "int8 saturation on a CPU without VNNI): the INT8 model's predictions depend on the "
            "CPU; export.int8.reduce_range: true makes them exact everywhere"
        )
    if check["flag"]:
        ctx.log(f"[quantize] warning: {check['flag']}")
    return runtime


def _probe(files: dict, out: Path, export, images) -> None:
    """The untrained network's INT8 file, for the search's latency probe: the stage's settings,
    with every operator quantized where ``operators`` is auto (the quickest INT8 file the stage may
    make: a candidate is dropped only when even that misses the budget). The accuracy fallback is
    left out: it keeps nodes in float only where the trained network needs it."""
    section = resolved_int8(export)
    operators = "all" if section.operators == "auto" else section.operators
    prepared = preprocess(files["onnx"], out.with_name("prepared.onnx"))
    quantize_int8(
        prepared,
        out,
        calibration_images=images,
        settings=int8_settings(section, operators=operators),
    )


register_backend(
    Backend(
        "onnx-int8",
        kind="quantize",
        file=INT8_FILE,
        load=onnx_loader("quantize", INT8_FILE),
        budget=lambda export: export.int8.max_drop,
        shipped={"student_int8.onnx": INT8_FILE},
        probe=_probe,
        description="ONNX INT8 QDQ, ONNX Runtime CPU",
    )
)
