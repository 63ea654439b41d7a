"""The accuracy-targeted INT8 fallback: quantize, and while the INT8 model loses more top-1 than
its budget, keep the node whose quantization alone hurts the logits most in float, and again."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exports.errors import ExportError
from exports.ort_runtime import create_session, run_batched
from exports.quantize import Int8Settings, quantizable_nodes, quantize_int8


@dataclass
class FallbackReport:
    fp32_top1: float
    int8_top1: float
    drop: float
    budget: float
    kept_float: list[str] = field(default_factory=list)
    # node -> logit MSE when quantized alone
    sensitivity: dict[str, float] = field(default_factory=dict)
    attempts: list[dict] = field(default_factory=list)



def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) * 100.0


def quantize_with_fallback(
    float_path: Path,
    out_path: Path,
    *,
    calibration_images: np.ndarray,
    val_images_u8: np.ndarray,
    val_labels: np.ndarray,
    settings: Int8Settings,
    budget: float,
    fallback: bool = True,
    batch_size: int = 256,
    reference_top1: float | None = None,
    stop_after_ptq: bool = False,
    pinned: dict[str, dict] | None = None,
    exact_graph: bool = False,
) -> FallbackReport:
    """Quantize; if val top-1 drops more than ``budget`` points below FP32, keep the most
    sensitive nodes in float, one more at a time, until it holds. Raises ``ExportError``
    with the measured drop when even that cannot meet the budget.

    ``reference_top1``: the FP32 top-1 the drop is measured from (default: ``float_path``'s;
    QAD passes the student's before fine-tuning). ``stop_after_ptq``: return after the plain
    quantization whatever its drop (the caller tries QAD first). ``pinned``: activation ranges
    to keep (``quantize_int8``). ``exact_graph``: judge the INT8 model by its QDQ graph run as
    written (exact integer arithmetic, what a VNNI CPU computes) instead of this CPU's fused
    kernels."""
    fp32_logits = run_batched(create_session(float_path), val_images_u8, batch_size=batch_size)
    fp32_top1 = _top1(fp32_logits, val_labels) if reference_top1 is None else reference_top1

    def evaluate(path: Path) -> tuple[float, np.ndarray]:
        logits = run_batched(
            create_session(path, optimize=not exact_graph), val_images_u8, batch_size=batch_size
        )
        return _top1(logits, val_labels), logits

    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "calibration"
        quantize_int8(
            float_path,
            out_path,
            calibration_images=calibration_images,
            settings=settings,
            cache_path=cache,
            pinned=pinned,
        )
        int8_top1, _ = evaluate(out_path)
        report = FallbackReport(fp32_top1, int8_top1, fp32_top1 - int8_top1, budget)
        report.attempts.append({"kept_float": [], "top1": int8_top1})
        if report.drop <= budget or stop_after_ptq:
            return report
        if not fallback:
            raise ExportError(
                f"INT8 loses {report.drop:.2f} points of val top-1 (budget {budget}); "
                f"enable the fallback or raise the budget"
            )
        nodes = quantizable_nodes(float_path)
        probe = Path(scratch) / "probe.onnx"
        for node in nodes:  # quantize one node at a time: how much does it alone hurt?
            quantize_int8(
                float_path,
                probe,
                calibration_images=calibration_images,
                settings=settings,
                exclude=[n for n in nodes if n != node],
                cache_path=cache,
                pinned=pinned,
            )
            _, logits = evaluate(probe)
            report.sensitivity[node] = float(np.mean((logits - fp32_logits) ** 2))
        ranked = sorted(nodes, key=lambda n: report.sensitivity[n], reverse=True)
        for k in range(1, len(ranked) + 1):
            kept = ranked[:k]
            quantize_int8(
                float_path,
                out_path,
                calibration_images=calibration_images,
                settings=settings,
                exclude=kept,
                cache_path=cache,
                pinned=pinned,
            )
            top1, _ = evaluate(out_path)
            report.attempts.append({"kept_float": kept, "top1": top1})
            if fp32_top1 - top1 <= budget:
                report.kept_float, report.int8_top1, report.drop = kept, top1, fp32_top1 - top1
                return report
        raise ExportError(
            f"INT8 loses {fp32_top1 - top1:.2f} points of val top-1 even with all "
            f"{len(ranked)} quantizable nodes kept in float (budget {budget})"
        )
