"""What the QAD stage hands the quantize stage, and the check both make before trusting a
simulation: the fine-tuned float file and the activation ranges QAD trained with, and whether the
simulated INT8 network (``cskd.quant``) computes what ONNX Runtime's QDQ model computes."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cskd.evaluate import predict_logits
from cskd.quant import float_model, set_activations, simulate
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from exports.quantize import Int8Settings, activation_params, add_outputs, preprocess, quantize_int8

FLOAT_FILE = "qad_fp32.onnx"  # the fine-tuned student in float, what the quantize stage quantizes
PINNED_FILE = "pinned_ranges.json"  # tensor name -> the activation range QAD trained with
PARITY_IMAGES = 1000
# Below this top-1 agreement with the QDQ graph (before any training) the simulation is not the
# exported model, and QAD would fine-tune something that is not shipped: it is skipped.
MIN_SIMULATION_AGREEMENT = 99.0


class SimulationMismatch(Exception):
    """The simulated INT8 network cannot be built, or does not compute what the QDQ model computes:
    QAD is skipped and the float fallback follows."""


def check_simulation(sim: torch.nn.Module, qdq: Path, images: torch.Tensor) -> dict:
    """Top-1 agreement and largest logit difference of the simulation against the QDQ graph run as
    written; raises ``SimulationMismatch`` below ``MIN_SIMULATION_AGREEMENT``."""
    agreement = logit_agreement(predict_logits(sim, images).numpy(),
                           run_batched(create_session(qdq, optimize=False), images.numpy()))
    if agreement["top1_agreement"] < MIN_SIMULATION_AGREEMENT:
        raise SimulationMismatch(
            "the simulated INT8 network agrees with the QDQ model on "
            f"{agreement['top1_agreement']:.1f}% of val images before training (at least "
            f"{MIN_SIMULATION_AGREEMENT:.0f}% needed): the QDQ model quantizes an operator the "
            "simulation does not model; export.int8.operators: weighted is simulated exactly"
        )
    return agreement


def quantized(
    sim: torch.nn.Module,
    fp32: Path,
    *,
    calibration: np.ndarray,
    settings: Int8Settings,
    folder: Path,
    pinned: dict | None = None,
) -> Path:
    """``fp32`` (the simulated network's float weights, exported) quantized by ONNX Runtime
    (calibrated,
    or with ``pinned`` ranges); the simulation takes the QDQ model's parameters. Returns the QDQ
    model."""
    prepared = preprocess(fp32, folder / "qad_prepared.onnx")
    qdq = quantize_int8(
        prepared,
        folder / "qad_int8.onnx",
        calibration_images=calibration,
        settings=settings,
        pinned=pinned,
    )
    try:
        set_activations(sim, activation_params(qdq), add_outputs(qdq))
    except ValueError as exc:  # the QDQ model's layers or sums cannot be matched to the network's
        raise SimulationMismatch(
            f"{exc}; export.int8.operators: weighted is simulated exactly"
        ) from None
    return qdq


def logit_agreement(simulated: np.ndarray, exported: np.ndarray) -> dict:
    return {
        "max_logit_diff": float(np.abs(simulated - exported).max()),
        "top1_agreement": float((simulated.argmax(1) == exported.argmax(1)).mean() * 100.0),
    }


def simulation(student: torch.nn.Module, settings: Int8Settings) -> torch.nn.Module:
    try:
        return simulate(
            student, activation_type=settings.activation_type, reduce_range=settings.reduce_range
        )
    # torch.fx cannot trace the network (vgg's layer loop, data-dependent flow)
    except ValueError as exc:
        raise SimulationMismatch(str(exc)) from None


def calibrated(
    sim: torch.nn.Module,
    *,
    calibration: np.ndarray,
    settings: Int8Settings,
    opset: int,
    sample_shape: tuple[int, ...],
    folder: Path,
) -> Path:
    """The simulation's float weights exported and quantized by ONNX Runtime with its own
    calibration; the simulation takes that QDQ model's ranges. Returns the QDQ model."""
    fp32 = export_onnx(
        float_model(sim).cpu(),
        sample=torch.zeros(2, *sample_shape),
        path=folder / "fp32.onnx",
        opset=opset,
    )
    return quantized(sim, fp32, calibration=calibration, settings=settings, folder=folder)


def simulation_agreement(
    student: torch.nn.Module,
    *,
    images: torch.Tensor,
    calibration: np.ndarray,
    settings: Int8Settings,
    opset: int,
) -> dict:
    """Whether QAD could train ``student`` quantized with ``settings`` exactly as it ships: the
    simulation against the QDQ model, before any training (``check_simulation``'s dict);
    raises ``SimulationMismatch`` when it cannot be built or does not match. ``images``: uint8
    ``[N, C, H, W]`` held-out images."""
    sim = simulation(student.eval(), settings)
    with tempfile.TemporaryDirectory() as scratch:
        qdq = calibrated(
            sim,
            calibration=calibration,
            settings=settings,
            opset=opset,
            sample_shape=tuple(images.shape[1:]),
            folder=Path(scratch),
        )
        return check_simulation(sim, qdq, images)


def choose_operators(budget: float, drop: float, load_student: Callable[[], torch.nn.Module], *,
                     images: torch.Tensor, calibration: np.ndarray, settings: Int8Settings,
                     opset: int) -> dict:
    """``operators: auto``: ``all`` when its post-training INT8 model holds the budget (``drop``
    points lost, at most ``budget``) and the QAD simulation of the student matches it (so a later
    QAD trains exactly what ships), else ``weighted``. The choice and its reason go into the
    card."""
    if drop > budget:
        return {"chosen": "weighted", "all_drop": drop,
                "why": f"with every operator quantized INT8 lost {drop:.2f} points (budget "
                       f"{budget})"}
    try:
        agreement = simulation_agreement(load_student(), images=images, calibration=calibration,
                                         settings=settings, opset=opset)
    except SimulationMismatch as exc:
        return {"chosen": "weighted", "all_drop": drop,
                "why": f"operators all is not simulated exactly for this network: {exc}"}
    return {"chosen": "all", "all_drop": drop, "simulation": agreement,
            "why": f"every operator quantized loses {drop:.2f} points (budget {budget}) and the "
                   "QAD simulation agrees with the QDQ model on "
                   f"{agreement['top1_agreement']:.1f}% of images"}
