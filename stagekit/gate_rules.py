"""The gate's rules: the student ships only if every rule holds.

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

import numpy as np

from cskd.checkpoint import load_tensors
from foundation.backends import FASTEST, backend, fastest_passing
from foundation.manifest import Manifest
from foundation.records import ChampionRecord, ValidationRecord
from stagekit.gate_section import ChampionRule, GateSection, ServingRule
from stagekit.stats import mcnemar, paired_bootstrap

DECIMALS = 2


def _rule(
    name: str,
    measured: float,
    threshold: float,
    *,
    at_most: bool = False,
    why: str = "",
    target: str | None = None,
) -> dict:
    """A rule passes when ``measured >= threshold`` (or ``<=`` with ``at_most``), both rounded to
    DECIMALS. ``target``: the export the rule judges (the report ranks only passing exports)."""
    m, t = round(float(measured), DECIMALS), round(float(threshold), DECIMALS)
    rule = {
        "rule": name,
        "measured": m,
        "threshold": t,
        "passed": m <= t if at_most else m >= t,
        "direction": "at_most" if at_most else "at_least",
        "measured_exact": float(measured),
    }
    if target is not None:
        rule["target"] = target
    return {**rule, "why": why} if why and not rule["passed"] else rule


def export_budgets(manifest: Manifest) -> dict[str, float]:
    """Each export target's accuracy budget (top-1 points it may lose against the FP32 student)."""
    return {
        t: float(backend(t).budget(manifest.export))
        for t in manifest.export.targets
        if backend(t).budget
    }


def export_rules(min_onnx_agreement: float, budgets: dict[str, float], metrics: dict) -> list[dict]:
    """The rules that judge one exported file each: ONNX agrees with PyTorch, and every further
    export is within its back-end's budget of the FP32 student (the serving stage picks with
    these)."""
    rules = [
        _rule(
            "onnx_agreement >= min_onnx_agreement",
            metrics["onnx_agreement"],
            min_onnx_agreement,
            target="onnx",
        )
    ]
    for target, values in metrics.get("exports", {}).items():
        # NaN or infinite logits: a broken file, whatever its top-1 says
        if values.get("nonfinite"):
            rules.append(
                _rule(
                    f"{target}: test images with non-finite logits == 0",
                    values["nonfinite"],
                    0,
                    at_most=True,
                    target=target,
                    why=f"{target} computed NaN or infinite logits on {values['nonfinite']} of "
                    f"{metrics['samples']} test images; they count as wrong predictions",
                )
            )
        if target in budgets:
            rules.append(
                _rule(
                    f"{target}_top1 >= student_top1 - {target} budget",
                    values["top1"],
                    metrics["student_top1"] - budgets[target],
                    target=target,
                )
            )
    return rules


def serving_rules(rule: ServingRule, serving: dict) -> list[dict]:
    """The served p99 and throughput at the judged load level (by default the largest measured)."""
    level = rule.concurrency or max(r["concurrency"] for r in serving["rows"])
    row = next(r for r in serving["rows"] if r["concurrency"] == level)
    where = (
        f"served {serving['target']} ({serving['engine']}, {serving['replicas']} replicas) at "
        f"concurrency {level}"
    )
    rules = []
    if rule.p99_ms is not None:
        rules.append(
            _rule(
                f"{where}: p99 latency (ms) <= gate.serving.p99_ms",
                row["p99_ms"],
                rule.p99_ms,
                at_most=True,
            )
        )
    if rule.min_throughput is not None:
        rules.append(
            _rule(
                f"{where}: requests/s >= gate.serving.min_throughput",
                row["throughput_rps"],
                rule.min_throughput,
            )
        )
    for r in rules:
        if not r["passed"] and row["failures"]:
            r["why"] = f"{row['failures']} of {row['requests']} requests failed"
    return rules


def evaluate_rules(
    gate: GateSection,
    budgets: dict[str, float],
    metrics: dict,
    latency: dict | None = None,
    serving: dict | None = None,
) -> list[dict]:
    chance = 100.0 / metrics["num_classes"]
    min_teacher = gate.min_teacher_top1 if gate.min_teacher_top1 is not None else 1.5 * chance
    rules = [
        _rule(
            "teacher_top1 >= min_teacher_top1",
            metrics["teacher_top1"],
            min_teacher,
            why=f"the teacher did not learn (chance is {chance:.2f}); fix its training before "
                "distilling",
        ),
        _rule(
            "student_top1 >= teacher_top1 - max_drop",
            metrics["student_top1"],
            metrics["teacher_top1"] - gate.max_drop,
        ),
    ]
    exports = export_rules(gate.min_onnx_agreement, budgets, metrics)
    rules.append(exports[0])
    if gate.min_student_top1 is not None:
        rules.append(
            _rule(
                "student_top1 >= min_student_top1", metrics["student_top1"], gate.min_student_top1
            )
        )
    if gate.require_ci:
        ci = metrics["student_vs_teacher"]["bootstrap"]
        rules.append(
            _rule(
                f"CI low of student - teacher ({ci['confidence']:.0%}) >= -max_drop",
                ci["ci_low"],
                -gate.max_drop,
            )
        )
    rules += exports[1:]
    if gate.max_class_drop is not None:
        models = metrics["models"]
        drops = [
            (t - s, c)
            for c, (s, t) in enumerate(
                zip(models["student"]["per_class"], models["teacher"]["per_class"], strict=True)
            )
            if s is not None and t is not None
        ]
        worst, cls = max(drops)
        rules.append(
            _rule(
                f"worst class drop vs teacher (class {cls}) <= max_class_drop",
                worst,
                gate.max_class_drop,
                at_most=True,
            )
        )
    if gate.latency is not None and latency is not None:
        rule = gate.latency
        # judged after the accuracy rules: only a passing artifact may be chosen
        if rule.backend == FASTEST:
            cell = fastest_passing(latency["results"], rules, batch=rule.batch, statistic="p90_ms")
            name = (
                f"fastest passing artifact ({cell['backend']}) p90 latency (ms) at batch "
                f"{rule.batch}"
            )
        else:
            cell = next(
                r
                for r in latency["results"]
                if r["backend"] == rule.backend and r["batch"] == rule.batch
            )
            name = f"{rule.backend} p90 latency (ms) at batch {rule.batch}"
        rules.append(
            {
                **_rule(name, cell["p90_ms"], rule.max_p90_ms, at_most=True),
                "backend": cell["backend"],
            }
        )
    if gate.serving is not None and serving is not None:
        rules += serving_rules(gate.serving, serving)
    return rules


def describe_failures(rules: list[dict]) -> str:
    """One clause per failed rule, with the same numbers the verdict used."""

    def clause(r: dict) -> str:
        if r["measured"] is None:
            return f"{r['rule']}: {r.get('why', 'cannot be judged')}"
        return (
            f"{r['rule']}: measured {r['measured']:.{DECIMALS}f}, needs "
            f"{'<=' if r['direction'] == 'at_most' else '>='} {r['threshold']:.{DECIMALS}f}"
            + (f" ({r['why']})" if r.get("why") else "")
        )

    return "; ".join(clause(r) for r in rules if not r["passed"])


def champion_rule(rule: ChampionRule, validate_dir, champion) -> dict:
    """The new student's ONNX top-1 against the champion's on the same test images, with the
    difference's paired-bootstrap interval and McNemar's p (informational: the rule is the
    difference against ``-max_regression``)."""
    if not rule.against:
        return {
            "rule": "not worse than the champion: none to compare with (the first ship of this "
                    "name, or the champion is this very model)",
            "passed": True,
            "measured": None,
            "threshold": None,
            "direction": "at_least",
        }
    metrics = champion.metrics
    version = metrics["version"]
    name = f"onnx_top1 >= champion {version} top1 - max_regression"
    if not metrics["comparable"]:
        return {
            "rule": name,
            "passed": False,
            "measured": None,
            "threshold": None,
            "direction": "at_least",
            "why": f"{metrics['why']}: not comparable; promote it by hand (`cskd-pipeline "
                   "promote`) or set ship.promote: always",
        }
    student = load_tensors(validate_dir / ValidationRecord.PREDICTIONS)
    theirs = load_tensors(champion.file(ChampionRecord.PREDICTIONS))
    labels = student["labels"].numpy()
    if not np.array_equal(labels, theirs["labels"].numpy()):
        raise GateError(
            f"champion {version} was evaluated on other test images than this run's; rerun"
        )
    ours_ok = student["onnx"].numpy().argmax(1) == labels
    theirs_ok = theirs["champion"].numpy().argmax(1) == labels
    ours, top1 = float(ours_ok.mean() * 100), float(theirs_ok.mean() * 100)
    result = _rule(
        name,
        ours,
        top1 - rule.max_regression,
        why=f"worse than the shipped champion {version} ({top1:.2f}); nothing ships and latest "
            f"stays on {version} (ship.promote: always ships every passing run)",
    )
    return {
        **result,
        "champion": {
            "version": version,
            "top1": top1,
            "student_top1": ours,
            "samples": int(len(labels)),
            "bootstrap": paired_bootstrap(
                ours_ok, theirs_ok, resamples=rule.resamples, seed=rule.seed
            ),
            "mcnemar": mcnemar(ours_ok, theirs_ok),
        },
    }


class GateError(RuntimeError):
    pass
