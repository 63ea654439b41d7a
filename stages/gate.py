"""Gate: the student ships only if every rule in the manifest holds.

Rules: student top-1 >= teacher top-1 - max_drop; the ONNX model agrees with
the PyTorch student on at least min_onnx_agreement percent of the test samples.
Each rule is recorded with its measured value, its threshold and its verdict.
"""

from __future__ import annotations

import json

from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import GateSection, Manifest


def evaluate_rules(gate: GateSection, metrics: dict) -> list[dict]:
    threshold = metrics["teacher_top1"] - gate.max_drop
    return [
        {"rule": "student_top1 >= teacher_top1 - max_drop", "measured": metrics["student_top1"],
         "threshold": threshold, "passed": metrics["student_top1"] >= threshold},
        {"rule": "onnx_agreement >= min_onnx_agreement", "measured": metrics["onnx_agreement"],
         "threshold": gate.min_onnx_agreement, "passed": metrics["onnx_agreement"] >= gate.min_onnx_agreement},
    ]


class GateStage(Stage):
    kind = "gate"
    version = 1
    inputs = ("validate",)

    def config(self, manifest: Manifest) -> dict:
        return {"gate": dump(manifest.gate)}

    def run(self, ctx: StageContext) -> StageResult:
        rules = evaluate_rules(ctx.manifest.gate, ctx.inputs["validate"].metrics)
        passed = all(r["passed"] for r in rules)
        (ctx.out_dir / "verdict.json").write_text(json.dumps({"passed": passed, "rules": rules}, indent=2) + "\n")
        failed = [r for r in rules if not r["passed"]]
        headline = "PASS" if passed else "FAIL: " + "; ".join(
            f"{r['rule']} ({r['measured']:.2f} < {r['threshold']:.2f})" for r in failed)
        return StageResult({"passed": passed, "rules": rules}, headline)
