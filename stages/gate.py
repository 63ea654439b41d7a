"""Gate: the student ships only if every rule holds.

Rules: student top-1 >= teacher top-1 - max_drop; the ONNX model agrees with the
PyTorch student on at least min_onnx_agreement percent of the test samples; each
further export (FP16, INT8, TensorRT) is within its budget of the FP32 student.
Each rule is recorded with its measured value, its threshold and its verdict.
"""

from __future__ import annotations

import json

from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest


def export_budgets(manifest: Manifest) -> dict[str, float]:
    e = manifest.export
    return {"onnx-fp16": e.fp16_max_drop, "onnx-int8": e.int8.max_drop, "trt": e.trt.max_drop}


def _rule(name: str, measured: float, threshold: float) -> dict:
    return {"rule": name, "measured": measured, "threshold": threshold, "passed": measured >= threshold}


def evaluate_rules(manifest: Manifest, metrics: dict) -> list[dict]:
    gate = manifest.gate
    rules = [
        _rule("student_top1 >= teacher_top1 - max_drop", metrics["student_top1"],
              metrics["teacher_top1"] - gate.max_drop),
        _rule("onnx_agreement >= min_onnx_agreement", metrics["onnx_agreement"], gate.min_onnx_agreement),
    ]
    budgets = export_budgets(manifest)
    for target, values in metrics.get("exports", {}).items():
        if target in budgets:
            rules.append(_rule(f"{target}_top1 >= student_top1 - {target} budget", values["top1"],
                               metrics["student_top1"] - budgets[target]))
    return rules


class GateStage(Stage):
    kind = "gate"
    version = 2
    inputs = ("validate",)

    def config(self, manifest: Manifest) -> dict:
        return {"gate": dump(manifest.gate), "export_budgets": export_budgets(manifest)}

    def run(self, ctx: StageContext) -> StageResult:
        rules = evaluate_rules(ctx.manifest, ctx.inputs["validate"].metrics)
        passed = all(r["passed"] for r in rules)
        (ctx.out_dir / "verdict.json").write_text(json.dumps({"passed": passed, "rules": rules}, indent=2) + "\n")
        failed = [r for r in rules if not r["passed"]]
        headline = "PASS" if passed else "FAIL: " + "; ".join(
            f"{r['rule']} ({r['measured']:.2f} < {r['threshold']:.2f})" for r in failed)
        return StageResult({"passed": passed, "rules": rules}, headline)
