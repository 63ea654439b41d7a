"""Gate: the student ships only if every rule holds.

Rules: student top-1 >= teacher top-1 - max_drop (optionally: the lower bound of
the paired-bootstrap CI of student - teacher clears -max_drop); the ONNX model
agrees with the PyTorch student on at least min_onnx_agreement percent of the
test samples; each further export (FP16, INT8, TensorRT) is within its budget of
the FP32 student; no class loses more than max_class_drop against the teacher;
p90 latency within budget. Each rule is recorded with its measured value, its
threshold and its verdict.
"""

from __future__ import annotations

import json

from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest


def export_budgets(manifest: Manifest) -> dict[str, float]:
    e = manifest.export
    return {"onnx-fp16": e.fp16_max_drop, "onnx-int8": e.int8.max_drop, "trt": e.trt.max_drop}


def _rule(name: str, measured: float, threshold: float, *, at_most: bool = False) -> dict:
    """A rule passes when ``measured >= threshold`` (or ``<=`` with ``at_most``)."""
    passed = measured <= threshold if at_most else measured >= threshold
    return {"rule": name, "measured": measured, "threshold": threshold, "passed": passed,
            "direction": "at_most" if at_most else "at_least"}


def evaluate_rules(manifest: Manifest, metrics: dict, latency: dict | None = None) -> list[dict]:
    gate = manifest.gate
    rules = [
        _rule("student_top1 >= teacher_top1 - max_drop", metrics["student_top1"],
              metrics["teacher_top1"] - gate.max_drop),
        _rule("onnx_agreement >= min_onnx_agreement", metrics["onnx_agreement"], gate.min_onnx_agreement),
    ]
    if gate.require_ci:
        ci = metrics["student_vs_teacher"]["bootstrap"]
        rules.append(_rule(f"CI low of student - teacher ({ci['confidence']:.0%}) >= -max_drop",
                           ci["ci_low"], -gate.max_drop))
    budgets = export_budgets(manifest)
    for target, values in metrics.get("exports", {}).items():
        if target in budgets:
            rules.append(_rule(f"{target}_top1 >= student_top1 - {target} budget", values["top1"],
                               metrics["student_top1"] - budgets[target]))
    if gate.max_class_drop is not None:
        models = metrics["models"]
        drops = [(t - s, c) for c, (s, t) in enumerate(zip(models["student"]["per_class"],
                                                          models["teacher"]["per_class"], strict=True))
                 if s is not None and t is not None]
        worst, cls = max(drops)
        rules.append(_rule(f"worst class drop vs teacher (class {cls}) <= max_class_drop", worst,
                           gate.max_class_drop, at_most=True))
    if gate.latency is not None and latency is not None:
        rule = gate.latency
        cell = next(r for r in latency["results"] if r["backend"] == rule.backend and r["batch"] == rule.batch)
        rules.append(_rule(f"{rule.backend} p90 latency (ms) at batch {rule.batch}", cell["p90_ms"],
                           rule.max_p90_ms, at_most=True))
    return rules


class GateStage(Stage):
    kind = "gate"
    version = 3

    def input_kinds(self, manifest: Manifest) -> tuple[str, ...]:
        return ("validate", "latency") if manifest.latency is not None else ("validate",)

    def config(self, manifest: Manifest) -> dict:
        return {"gate": dump(manifest.gate), "export_budgets": export_budgets(manifest)}

    def run(self, ctx: StageContext) -> StageResult:
        latency = ctx.inputs["latency"].metrics if "latency" in ctx.inputs else None
        rules = evaluate_rules(ctx.manifest, ctx.inputs["validate"].metrics, latency)
        passed = all(r["passed"] for r in rules)
        (ctx.out_dir / "verdict.json").write_text(json.dumps({"passed": passed, "rules": rules}, indent=2) + "\n")
        failed = [r for r in rules if not r["passed"]]
        headline = "PASS" if passed else "FAIL: " + "; ".join(
            f"{r['rule']} (measured {r['measured']:.2f}, threshold {r['threshold']:.2f})" for r in failed)
        return StageResult({"passed": passed, "rules": rules}, headline)
