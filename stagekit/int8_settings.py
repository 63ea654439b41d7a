"""The ``export.int8`` section (with its ``qad`` subsection) and ``export.cpu``: read by the
quantize stage (stages/quantize.py) and by the QAD stage (stages/qad.py), so it lives beside
both rather than in either."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BeforeValidator, Field

from cskd.config import Strict
from cskd.loss_registry import LOSS_PRESETS
from exports.cpu import kernels_exact, machine_class, recorded_flags
from exports.quantize import Int8Settings
from foundation.fields import Points
from foundation.sections import EXPORT_SETTINGS
from stagekit.data import train_val
from stagekit.data_section import TrainData

CpuClass = Literal["auto", "vnni", "avx2", "any"]
# QAD's loss: the student's own (inherit), or one of the study's named losses.
QadLoss = Literal[("inherit", *LOSS_PRESETS)]


class QadSection(Strict):
    """Quantization-aware distillation: fine-tune the student with simulated INT8 against a frozen
    teacher, then quantize it again; the float fallback comes after it, as the last resort."""

    when: Literal["never", "on_drop", "always"] = Field(
        "on_drop", description="on_drop: when post-training quantization misses int8.max_drop")
    epochs: int = Field(2, ge=1, le=1000)
    lr: float = Field(0.001, gt=0, le=10)
    loss: QadLoss = Field(
        "inherit",
        description="inherit: the student's own loss; or a named loss "
        f"({', '.join(LOSS_PRESETS)}) with its default settings",
    )
    teacher: Literal["teacher", "fp32-student"] = Field(
        "teacher",
        description="teacher: the manifest's; fp32-student: the student before quantization "
                    "(ModelOpt's)",
    )


class Int8Section(Strict):
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = Field(
        512, ge=16, le=100_000, description="drawn from the training split only"
    )
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8: fast on x86 CPUs (U8S8); int8: symmetric, what TensorRT needs"
    )
    per_channel: bool = True
    reduce_range: bool | None = Field(
        None,
        description="7-bit weights: ONNX Runtime's integer kernels then compute exactly what the "
                    "QDQ graph says on every x86 CPU; with 8-bit weights, CPUs without VNNI (AVX2 "
                    "only) saturate uint8 x int8 sums and the INT8 model's predictions depend on "
                    "the CPU. null (the default): follows export.cpu, off for vnni, on for avx2 "
                    "and any",
    )
    operators: Annotated[
        Literal["auto", "weighted", "all"],
        BeforeValidator(lambda v: "weighted" if v is None else v),
    ] = Field(
        "auto",
        description="weighted (also null): Conv, Gemm and MatMul, the operators between them stay "
                    "float with a dequantize and quantize around each; all: every operator ONNX "
                    "Runtime can quantize (residual Add, Relu, pooling), so the integer kernels "
                    "run back to back; auto (the default): all where the QAD simulation matches "
                    "the QDQ model and the budget holds, else weighted (the model card says which "
                    "and why); QAD trains weighted under auto",
    )
    max_drop: Points = Field(1.0, description="top-1 points INT8 may lose against the FP32 student")
    fallback: bool = Field(
        True, description="keep the most sensitive nodes in float until max_drop holds"
    )
    qad: QadSection = Field(
        QadSection(), description="quantization-aware distillation when INT8 loses too much"
    )


EXPORT_SETTINGS.register(
    "cpu",
    CpuClass,
    Field(
        "auto",
        description="the CPU class the INT8 model is deployed on: vnni (AVX-512 VNNI, AVX-VNNI or "
                    "AMX), avx2, any (every x86 CPU), or auto (this machine's class). It sets "
                    "int8.reduce_range and the kernels the INT8 budget is checked with",
    ),
)
EXPORT_SETTINGS.register(
    "int8",
    Int8Section,
    Field(Int8Section(), description="INT8 quantization (onnx-int8, openvino-int8) and its budget"),
)


def cpu_class(export) -> str:
    """``export.cpu`` with auto resolved to this machine's class."""
    return machine_class() if export.cpu == "auto" else export.cpu


def resolved_int8(export) -> Int8Section:
    """``export.int8`` with ``reduce_range`` resolved from ``export.cpu`` (off for vnni, else
    on)."""
    int8 = export.int8
    reduce_range = (
        int8.reduce_range if int8.reduce_range is not None else cpu_class(export) != "vnni"
    )
    return int8.model_copy(update={"reduce_range": reduce_range})


def int8_settings(int8: Int8Section, *, operators: str) -> Int8Settings:
    """The resolved settings (``resolved_int8``'s section, ``operators`` decided) that ONNX Runtime
    quantizes with: what both the quantize stage and QAD (whose activation ranges these are)
    depend on."""
    return Int8Settings(
        method=int8.calibration,
        images=int8.calibration_images,
        activation_type=int8.activation_type,
        per_channel=int8.per_channel,
        reduce_range=int8.reduce_range,
        operators=operators,
    )


def calibration_images(data: TrainData, count: int) -> np.ndarray:
    """The first ``count`` images of the training split (never val or test), as float32 in [0,
    1]."""
    train, _ = train_val(data)
    return train.head(count).numpy().astype(np.float32) / 255.0


def cpu_check(cpu: str, *, reduce_range: bool) -> dict:
    """How the INT8 budget is checked for a model deployed on ``cpu``-class CPUs, on this machine.

    The integer kernels of a VNNI CPU, and of any CPU with 7-bit weights, compute the QDQ graph
    exactly; an AVX2 CPU's saturate with 8-bit weights. Where the deployment CPU is exact and
    this machine is not, the budget is checked on the graph run as written (what the deployment
    CPU computes). The reverse (saturation on the deployment CPU, exact here) cannot be
    reproduced: the card flags it."""
    machine = machine_class()
    target_exact, machine_exact = (
        kernels_exact(c, reduce_range=reduce_range) for c in (cpu, machine)
    )
    emulate = target_exact and not machine_exact
    flag = None
    if not target_exact and machine_exact:
        flag = (
            f"the INT8 budget was checked on this machine's exact {machine} kernels; a {cpu} CPU "
            "without VNNI saturates 8-bit weights and may lose more: set int8.reduce_range: true"
        )
    elif cpu != machine and not emulate:
        flag = (
            f"the INT8 budget was checked on this machine's {machine} kernels, not on a {cpu} CPU's"
        )
    checked = (
        "the QDQ graph computed exactly, as the deployment CPU's kernels do"
        if emulate
        else f"this machine's {machine} kernels"
    )
    return {
        "class": cpu,
        "machine": machine,
        "machine_flags": recorded_flags(),
        "reduce_range": reduce_range,
        "checked_with": checked,
        "flag": flag,
        "exact_graph": emulate,
        "note": f"validated for {cpu} CPUs; a CPU of another class may compute different INT8 "
                "results",
    }
