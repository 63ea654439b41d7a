"""Gate: the student ships only if every rule holds.

Rules: the teacher learned (test top-1 at least ``min_teacher_top1``, by default
1.5 times chance); student top-1 >= teacher top-1 - max_drop (optionally: the
lower bound of the paired-bootstrap CI of student - teacher clears -max_drop);
optionally a floor on the student's top-1; the ONNX model agrees with the
PyTorch student on at least min_onnx_agreement percent of the test samples; each
further export is within its back-end's budget of the FP32 student; no class
loses more than max_class_drop against the teacher; p90 latency within budget, by default
that of the fastest artifact whose accuracy rules passed (the one the report recommends).
Each rule is recorded with its measured value, its threshold and its verdict,
compared at the precision they are printed with (``DECIMALS``), so a printed
verdict never contradicts its numbers.
"""

from __future__ import annotations

import json

from cskd.config import Strict
from pipeline.core.backends import FASTEST, backend, fastest_passing, manifest_value
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.manifest import GateSection, Manifest

DECIMALS = 2


def _rule(name: str, measured: float, threshold: float, *, at_most: bool = False, why: str = "",
          target: str | None = None) -> dict:
    """A rule passes when ``measured >= threshold`` (or ``<=`` with ``at_most``), both rounded to
    DECIMALS. ``target``: the export the rule judges (the report ranks only passing exports)."""
    m, t = round(float(measured), DECIMALS), round(float(threshold), DECIMALS)
    rule = {"rule": name, "measured": m, "threshold": t, "passed": m <= t if at_most else m >= t,
            "direction": "at_most" if at_most else "at_least", "measured_exact": float(measured)}
    if target is not None:
        rule["target"] = target
    return {**rule, "why": why} if why and not rule["passed"] else rule


def evaluate_rules(gate: GateSection, budgets: dict[str, float], metrics: dict, latency: dict | None = None) -> list[dict]:
    chance = 100.0 / metrics["num_classes"]
    min_teacher = gate.min_teacher_top1 if gate.min_teacher_top1 is not None else 1.5 * chance
    rules = [
        _rule("teacher_top1 >= min_teacher_top1", metrics["teacher_top1"], min_teacher,
              why=f"the teacher did not learn (chance is {chance:.2f}); fix its training before distilling"),
        _rule("student_top1 >= teacher_top1 - max_drop", metrics["student_top1"], metrics["teacher_top1"] - gate.max_drop),
        _rule("onnx_agreement >= min_onnx_agreement", metrics["onnx_agreement"], gate.min_onnx_agreement,
              target="onnx"),
    ]
    if gate.min_student_top1 is not None:
        rules.append(_rule("student_top1 >= min_student_top1", metrics["student_top1"], gate.min_student_top1))
    if gate.require_ci:
        ci = metrics["student_vs_teacher"]["bootstrap"]
        rules.append(_rule(f"CI low of student - teacher ({ci['confidence']:.0%}) >= -max_drop",
                           ci["ci_low"], -gate.max_drop))
    for target, values in metrics.get("exports", {}).items():
        if target in budgets:
            rules.append(_rule(f"{target}_top1 >= student_top1 - {target} budget", values["top1"],
                               metrics["student_top1"] - budgets[target], target=target))
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
        if rule.backend == FASTEST:  # judged after the accuracy rules: only a passing artifact may be chosen
            cell = fastest_passing(latency["results"], rules, batch=rule.batch, statistic="p90_ms")
            name = f"fastest passing artifact ({cell['backend']}) p90 latency (ms) at batch {rule.batch}"
        else:
            cell = next(r for r in latency["results"] if r["backend"] == rule.backend and r["batch"] == rule.batch)
            name = f"{rule.backend} p90 latency (ms) at batch {rule.batch}"
        rules.append({**_rule(name, cell["p90_ms"], rule.max_p90_ms, at_most=True), "backend": cell["backend"]})
    return rules


def describe_failures(rules: list[dict]) -> str:
    """One clause per failed rule, with the same numbers the verdict used."""
    return "; ".join(f"{r['rule']}: measured {r['measured']:.{DECIMALS}f}, needs "
                     f"{'<=' if r['direction'] == 'at_most' else '>='} {r['threshold']:.{DECIMALS}f}"
                     + (f" ({r['why']})" if r.get("why") else "") for r in rules if not r["passed"])


class GateConfig(Strict):
    gate: GateSection
    budgets: dict[str, float]  # target -> top-1 points it may lose against the FP32 student
    latency: bool


class GateStage(Stage):
    kind = "gate"
    version = 5  # 5: the latency rule judges the fastest passing artifact by default
    Config = GateConfig

    @classmethod
    def configure(cls, manifest: Manifest) -> GateConfig:
        budgets = {t: float(manifest_value(manifest, backend(t).budget_field))
                   for t in manifest.export.targets if backend(t).budget_field}
        return GateConfig(gate=manifest.gate, budgets=budgets, latency=manifest.latency is not None)

    def inputs(self, config: GateConfig) -> tuple[str, ...]:
        return ("validate", "latency") if config.latency else ("validate",)

    def run(self, config: GateConfig, ctx: StageContext) -> StageResult:
        latency = ctx.inputs["latency"].metrics if "latency" in ctx.inputs else None
        rules = evaluate_rules(config.gate, config.budgets, ctx.inputs["validate"].metrics, latency)
        passed = all(r["passed"] for r in rules)
        (ctx.out_dir / "verdict.json").write_text(json.dumps({"passed": passed, "rules": rules}, indent=2) + "\n")
        return StageResult({"passed": passed, "rules": rules}, "PASS" if passed else "FAIL: " + describe_failures(rules))
