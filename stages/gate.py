"""Gate: the student ships only if every rule holds (the rules: ``stagekit/gate_rules.py``).
Its inputs are records: the validate stage's metrics and predictions, the latency and serving
stages' figures, and the champion stage's predictions when a champion is shipped."""

from __future__ import annotations

import json

from cskd.config import Strict
from foundation.contracts import Added, Stage, StageContext, StageResult
from foundation.manifest import Manifest
from foundation.records import VerdictRecord
from stagekit.champion_file import find_champion
from stagekit.gate_rules import champion_rule, describe_failures, evaluate_rules, export_budgets
from stagekit.gate_section import ChampionRule, GateSection


class GateConfig(Strict):
    gate: GateSection
    budgets: dict[str, float]  # target -> top-1 points it may lose against the FP32 student
    latency: bool
    champion: ChampionRule | None = Added()  # None: ship.promote: always
    serving: bool | None = Added()  # True: gate.serving judges the serving stage's figures


class GateStage(Stage):
    kind = "gate"
    # 5: the latency rule judges the fastest passing artifact by default (the champion rule is an
    version = 5
    # Added field: gates without it keep their ids)
    Config = GateConfig
    Record = VerdictRecord  # passed, and every rule with its measured value

    @classmethod
    def configure(cls, manifest: Manifest) -> GateConfig:
        budgets = export_budgets(manifest)
        champion = None
        if manifest.ship.promote == "if_not_worse":
            champion = ChampionRule(
                max_regression=manifest.gate.max_regression,
                resamples=manifest.validate_.bootstrap_resamples,
                seed=manifest.validate_.seed,
                against=find_champion(manifest) is not None,
            )
        return GateConfig(
            gate=manifest.gate,
            budgets=budgets,
            latency=manifest.latency is not None,
            champion=champion,
            serving=True if manifest.gate.serving is not None else None,
        )

    def inputs(self, config: GateConfig) -> tuple[str, ...]:
        against = config.champion is not None and config.champion.against
        return (
            "validate",
            *(("latency",) if config.latency else ()),
            *(("serving",) if config.serving else ()),
            *(("champion",) if against else ()),
        )

    def run(self, config: GateConfig, ctx: StageContext) -> StageResult:
        latency = ctx.inputs["latency"].metrics if "latency" in ctx.inputs else None
        serving = ctx.inputs["serving"].metrics if "serving" in ctx.inputs else None
        rules = evaluate_rules(
            config.gate, config.budgets, ctx.inputs["validate"].metrics, latency, serving
        )
        if config.champion is not None:
            rules.append(
                champion_rule(
                    config.champion, ctx.inputs["validate"].path, ctx.inputs.get("champion")
                )
            )
        passed = all(r["passed"] for r in rules)
        (ctx.out_dir / "verdict.json").write_text(
            json.dumps({"passed": passed, "rules": rules}, indent=2) + "\n"
        )
        return StageResult(
            {"passed": passed, "rules": rules},
            "PASS" if passed else "FAIL: " + describe_failures(rules),
        )
