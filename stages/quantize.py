"""Quantize: INT8 QDQ with ONNX Runtime, calibrated on training images. When INT8 loses more
val top-1 than ``int8.max_drop``: quantization-aware distillation (``int8.qad``, stages/qad.py),
then, as the last resort, the fallback that keeps the most sensitive nodes in float.
Registers ``onnx-int8``."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BeforeValidator, Field

from cskd.config import Strict
from exports.cpu import kernels_exact, machine_class, recorded_flags
from exports.quantize import (
    Int8Settings,
    count_qdq,
    preprocess,
    quantize_with_fallback,
    runtime_agreement,
)
from pipeline.core.backends import Backend, register_backend
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.data_section import TrainData
from pipeline.core.fields import Points
from pipeline.core.manifest import Manifest
from pipeline.core.sections import EXPORT_SETTINGS
from stages.data import held_out, train_val
from stages.export import ONNX_FILE, onnx_loader
from stages.models import WEIGHTS_FILE, load_network
from stages.qad import PARITY_IMAGES, QadPlan, QadSection

CpuClass = Literal["auto", "vnni", "avx2", "any"]


class Int8Section(Strict):
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = Field(512, ge=16, le=100_000, description="drawn from the training split only")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8: fast on x86 CPUs (U8S8); int8: symmetric, what TensorRT needs")
    per_channel: bool = True
    reduce_range: bool | None = Field(
        None, description="7-bit weights: ONNX Runtime's integer kernels then compute exactly what the QDQ graph "
                          "says on every x86 CPU; with 8-bit weights, CPUs without VNNI (AVX2 only) saturate "
                          "uint8 x int8 sums and the INT8 model's predictions depend on the CPU. null (the default): "
                          "follows export.cpu, off for vnni, on for avx2 and any")
    operators: Annotated[Literal["auto", "weighted", "all"], BeforeValidator(lambda v: "weighted" if v is None else v)] = Field(
        "auto", description="weighted (also null): Conv, Gemm and MatMul, the operators between them stay float "
                            "with a dequantize and quantize around each; all: every operator ONNX Runtime can "
                            "quantize (residual Add, Relu, pooling), so the integer kernels run back to back; auto "
                            "(the default): all where the QAD simulation matches the QDQ model and the budget "
                            "holds, else weighted (the model card says which and why)")
    max_drop: Points = Field(1.0, description="top-1 points INT8 may lose against the FP32 student")
    fallback: bool = Field(True, description="keep the most sensitive nodes in float until max_drop holds")
    qad: QadSection = Field(QadSection(), description="quantization-aware distillation when INT8 loses too much")


EXPORT_SETTINGS.register("cpu", CpuClass, Field(
    "auto", description="the CPU class the INT8 model is deployed on: vnni (AVX-512 VNNI, AVX-VNNI or AMX), avx2, "
                        "any (every x86 CPU), or auto (this machine's class). It sets int8.reduce_range and the "
                        "kernels the INT8 budget is checked with"))
EXPORT_SETTINGS.register("int8", Int8Section, Field(Int8Section(), description="INT8 quantization (onnx-int8, "
                                                                               "openvino-int8) and its budget"))


def cpu_class(export) -> str:
    """``export.cpu`` with auto resolved to this machine's class."""
    return machine_class() if export.cpu == "auto" else export.cpu


INT8_FILE = "model_int8.onnx"
# The INT8 budget is measured on at most this many val images (a streamed folder's val split
# can be 100,000 images; an in-memory one is used whole).
BUDGET_IMAGES = 10_000


class QuantizeConfig(Strict):
    int8: Int8Section  # reduce_range resolved from export.cpu
    cpu: Literal["vnni", "avx2", "any"]  # the CPU class the INT8 model is validated for (export.cpu resolved)
    data: TrainData  # calibration images from train, the fallback's accuracy on val
    qad: QadPlan | None = None  # None: int8.qad.when is never
    student_model: str  # operators: auto checks the QAD simulation of this network
    opset: int


def _qad_plan(manifest: Manifest) -> QadPlan | None:
    section = manifest.export.int8.qad
    if section.when == "never":
        return None
    s = manifest.student
    loss = {"inherit": s.loss.for_pair(manifest.teacher.model, s.model), "kd": {"kind": "kd"},
            "cskd-core": {"kind": "cskd", "preset": "core"}}[section.loss]
    return QadPlan(section=section, loss=loss, student_model=s.model,
                   teacher_model=manifest.teacher.model if section.teacher == "teacher" else s.model,
                   batch_size=s.train.batch_size, augment=s.train.augment.model_dump(), seed=s.train.seed,
                   opset=manifest.export.opset)


def cpu_check(cpu: str, *, reduce_range: bool) -> dict:
    """How the INT8 budget is checked for a model deployed on ``cpu``-class CPUs, on this machine.

    The integer kernels of a VNNI CPU, and of any CPU with 7-bit weights, compute the QDQ graph
    exactly; an AVX2 CPU's saturate with 8-bit weights. Where the deployment CPU is exact and
    this machine is not, the budget is checked on the graph run as written (what the deployment
    CPU computes). The reverse (saturation on the deployment CPU, exact here) cannot be
    reproduced: the card flags it."""
    machine = machine_class()
    target_exact, machine_exact = (kernels_exact(c, reduce_range=reduce_range) for c in (cpu, machine))
    emulate = target_exact and not machine_exact
    flag = None
    if not target_exact and machine_exact:
        flag = (f"the INT8 budget was checked on this machine's exact {machine} kernels; a {cpu} CPU without VNNI "
                f"saturates 8-bit weights and may lose more: set int8.reduce_range: true")
    elif cpu != machine and not emulate:
        flag = f"the INT8 budget was checked on this machine's {machine} kernels, not on a {cpu} CPU's"
    checked = ("the QDQ graph computed exactly, as the deployment CPU's kernels do" if emulate
               else f"this machine's {machine} kernels")
    return {"class": cpu, "machine": machine, "machine_flags": recorded_flags(), "reduce_range": reduce_range,
            "checked_with": checked, "flag": flag, "exact_graph": emulate,
            "note": f"validated for {cpu} CPUs; a CPU of another class may compute different INT8 results"}


class QuantizeStage(Stage):
    kind = "quantize"
    # 3: QAD before the float fallback; 4: QAD keeps the ranges it trained with;
    # 5: operators auto, reduce_range and the budget's kernels follow export.cpu
    version = 5
    Config = QuantizeConfig
    requires = ("export",)

    @classmethod
    def configure(cls, manifest: Manifest) -> QuantizeConfig | None:
        export = manifest.export
        if "onnx-int8" not in export.targets:
            return None
        cpu = cpu_class(export)
        reduce_range = export.int8.reduce_range if export.int8.reduce_range is not None else cpu != "vnni"
        return QuantizeConfig(int8=export.int8.model_copy(update={"reduce_range": reduce_range}), cpu=cpu,
                              data=manifest.data.train_view(), qad=_qad_plan(manifest),
                              student_model=manifest.student.model, opset=export.opset)

    def inputs(self, config: QuantizeConfig) -> tuple[str, ...]:
        if config.qad is not None:
            return ("export", "distill", "teacher")
        return ("export", "distill") if config.int8.operators == "auto" else ("export",)

    def run(self, config: QuantizeConfig, ctx: StageContext) -> StageResult:
        section = config.int8
        check = cpu_check(config.cpu, reduce_range=section.reduce_range)
        settings = Int8Settings(calibration=section.calibration, activation_type=section.activation_type,
                                per_channel=section.per_channel, reduce_range=section.reduce_range,
                                operators="all" if section.operators == "auto" else section.operators)
        prepared = preprocess(ctx.inputs["export"].file(ONNX_FILE), ctx.out_dir / "model_prepared.onnx")
        train, _ = train_val(config.data)
        val, split_name = held_out(config.data)
        calibration = train.head(section.calibration_images).numpy().astype(np.float32) / 255.0
        budget = val.subset(torch.arange(min(len(val), BUDGET_IMAGES)))  # all of an in-memory val split
        args = {"calibration_images": calibration, "val_images_u8": budget.head(len(budget)).numpy(),
                "val_labels": budget.labels.numpy(), "settings": settings, "budget": section.max_drop,
                "fallback": section.fallback, "exact_graph": check["exact_graph"]}
        try_qad = config.qad is not None
        report = quantize_with_fallback(prepared, ctx.out_dir / INT8_FILE, **args,
                                        stop_after_ptq=try_qad or section.operators == "auto")
        choice = None
        if section.operators == "auto":
            choice = _choose_operators(config, ctx, report, images=val.head(PARITY_IMAGES), calibration=calibration,
                                       settings=settings)
            if choice["chosen"] == "weighted":
                args["settings"] = settings = replace(settings, operators="weighted")
                report = quantize_with_fallback(prepared, ctx.out_dir / INT8_FILE, **args, stop_after_ptq=try_qad)
        ptq_drop, qad, qad_skipped = report.drop, None, None
        if try_qad and (config.qad.section.when == "always" or report.drop > section.max_drop):
            from stages.qad import SimulationMismatch, run_qad

            ctx.log(f"[qad] INT8 after calibration loses {report.drop:.2f} points of {split_name} top-1 (budget "
                    f"{section.max_drop}): quantization-aware distillation, {config.qad.section.epochs} epoch(s)")
            try:
                qad = run_qad(config.qad, config.data, inputs=ctx.inputs, calibration=calibration, settings=settings,
                              work_dir=ctx.work_dir, out_dir=ctx.out_dir, progress=ctx.progress, log=ctx.log)
            except SimulationMismatch as exc:  # train nothing that would not ship; the fallback follows
                qad_skipped = str(exc)
                ctx.log(f"[qad] warning: skipped: {exc}")
        if qad is not None:
            qad_prepared = preprocess(qad.float_onnx, ctx.out_dir / "qad_prepared.onnx")
            report = quantize_with_fallback(qad_prepared, ctx.out_dir / INT8_FILE, **args,
                                            reference_top1=report.fp32_top1, pinned=qad.pinned)
            qad_prepared.unlink()
        elif report.drop > section.max_drop:  # QAD off or skipped: the fallback on the calibrated model
            report = quantize_with_fallback(prepared, ctx.out_dir / INT8_FILE, **args)
        prepared.unlink()
        (ctx.out_dir / "fallback.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
        runtime = runtime_agreement(ctx.out_dir / INT8_FILE, args["val_images_u8"])
        if runtime["top1_agreement"] < 100.0:
            ctx.log(f"[quantize] warning: ONNX Runtime's integer kernels on this CPU disagree with the QDQ graph on "
                    f"{100 - runtime['top1_agreement']:.2f}% of {split_name} images (uint8 x int8 saturation on a "
                    f"CPU without VNNI): the INT8 model's predictions depend on the CPU; "
                    f"export.int8.reduce_range: true makes them exact everywhere")
        if check["flag"]:
            ctx.log(f"[quantize] warning: {check['flag']}")
        metrics = {"format": "QDQ", "activation_type": section.activation_type, "weight_type": "int8",
                   "per_channel": section.per_channel, "calibration": section.calibration,
                   "calibration_split": "train", "calibration_images": len(calibration),
                   **count_qdq(ctx.out_dir / INT8_FILE),
                   "budget_split": split_name, "budget_images": len(budget), "val_fp32_top1": report.fp32_top1,
                   "val_int8_top1": report.int8_top1, "val_drop": report.drop,
                   "kept_float": report.kept_float, "ptq_drop": ptq_drop, "reduce_range": section.reduce_range,
                   "operators": settings.operators, "operators_choice": choice, "cpu": check,
                   "runtime_vs_graph": runtime,
                   "qad_skipped": qad_skipped,
                   "qad": None if qad is None else {
                       "epochs": qad.epochs, "loss": config.qad.loss.kind, "teacher": config.qad.section.teacher,
                       "drop": report.fp32_top1 - report.attempts[0]["top1"],  # before any node is kept in float
                       "simulated_val_top1": qad.history[-1].get("val_top1"), "parity": qad.parity}}
        kept = f", {len(report.kept_float)} node(s) kept in float" if report.kept_float else ""
        kept += f", after QAD (calibration alone lost {ptq_drop:.2f})" if qad is not None else ""
        return StageResult(metrics, f"{split_name} top-1 {report.int8_top1:.2f} (fp32 {report.fp32_top1:.2f}), "
                                    f"operators {settings.operators}, {config.cpu} CPUs{kept}",
                           extra={"input": ctx.inputs["export"].record["input"]})


def _choose_operators(config: QuantizeConfig, ctx: StageContext, report, *, images: torch.Tensor,
                      calibration: np.ndarray, settings: Int8Settings) -> dict:
    """``operators: auto``: ``all`` when its post-training INT8 model holds the budget and the QAD
    simulation matches it (so a later QAD trains exactly what ships), else ``weighted``. The
    choice and its reason go into the card."""
    from stages.qad import SimulationMismatch, simulation_agreement

    budget = config.int8.max_drop
    if report.drop > budget:
        return {"chosen": "weighted", "why": f"with every operator quantized INT8 lost {report.drop:.2f} points "
                                             f"(budget {budget})", "all_drop": report.drop}
    student = load_network(config.student_model, config.data.source, ctx.inputs["distill"].file(WEIGHTS_FILE))
    try:
        agreement = simulation_agreement(student, images=images, calibration=calibration, settings=settings,
                                         opset=config.opset)
    except SimulationMismatch as exc:
        return {"chosen": "weighted", "why": f"operators all is not simulated exactly for this network: {exc}",
                "all_drop": report.drop}
    return {"chosen": "all", "why": f"every operator quantized loses {report.drop:.2f} points (budget {budget}) and "
                                    f"the QAD simulation agrees with the QDQ model on "
                                    f"{agreement['top1_agreement']:.1f}% of images",
            "all_drop": report.drop, "simulation": agreement}


register_backend(Backend("onnx-int8", kind="quantize", file=INT8_FILE, load=onnx_loader("quantize", INT8_FILE),
                         budget=lambda export: export.int8.max_drop, shipped={"student_int8.onnx": INT8_FILE},
                         description="ONNX INT8 QDQ, ONNX Runtime CPU"))
