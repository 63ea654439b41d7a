"""Each gate rule passes and fails on its own numbers."""

from __future__ import annotations

import re

import pytest
from scipy import stats

from foundation.errors import ManifestError
from pipeline.manifest_io import manifest_from_text
from stagekit.gate_rules import describe_failures, evaluate_rules
from stages.gate import GateStage
from tests.conftest import edited


def _metrics(student=90.0, teacher=92.0, agreement=100.0, int8=89.5, per_class_s=(90, 80), per_class_t=(90, 90),
             ci_low=-3.0):
    models = {"student": {"per_class": list(per_class_s)}, "teacher": {"per_class": list(per_class_t)}}
    return {"student_top1": student, "teacher_top1": teacher, "onnx_agreement": agreement, "num_classes": 10,
            "exports": {"onnx": {"top1": student}, "onnx-int8": {"top1": int8}}, "models": models,
            "student_vs_teacher": {"bootstrap": {"ci_low": ci_low, "confidence": 0.95}}}


def _rules(manifest_text, metrics, latency=None):
    config = GateStage.configure(manifest_from_text(manifest_text))  # the stage's own projection
    return evaluate_rules(config.gate, config.budgets, metrics, latency)


def _verdicts(manifest_text, metrics, latency=None):
    return {r["rule"]: r["passed"] for r in _rules(manifest_text, metrics, latency)}


def _rule(verdicts, prefix):
    return next(v for k, v in verdicts.items() if k.startswith(prefix))


def test_teacher_relative_rule():
    text = edited(gate__max_drop=2.0)
    assert _rule(_verdicts(text, _metrics(student=90.0, teacher=92.0)), "student_top1") is True
    assert _rule(_verdicts(text, _metrics(student=89.9, teacher=92.0)), "student_top1") is False


def test_onnx_agreement_rule():
    text = edited(gate__min_onnx_agreement=99.9)
    assert _rule(_verdicts(text, _metrics(agreement=99.95)), "onnx_agreement") is True
    assert _rule(_verdicts(text, _metrics(agreement=99.8)), "onnx_agreement") is False


def test_export_budget_rule():
    text = edited(export={"targets": ["onnx", "onnx-int8"], "int8": {"max_drop": 0.5}})
    assert _rule(_verdicts(text, _metrics(int8=89.5)), "onnx-int8_top1") is True
    assert _rule(_verdicts(text, _metrics(int8=89.4)), "onnx-int8_top1") is False


def test_per_class_rule_names_the_worst_class():
    text = edited(gate__max_class_drop=10.0)
    rules = _rules(text, _metrics(per_class_s=(90, 80), per_class_t=(90, 90)))
    rule = next(r for r in rules if "class" in r["rule"])
    assert rule["passed"] and rule["measured"] == 10 and "class 1" in rule["rule"]
    rules = _rules(edited(gate__max_class_drop=9.0), _metrics())
    assert next(r for r in rules if "class" in r["rule"])["passed"] is False


def test_confidence_interval_rule():
    text = edited(gate__max_drop=2.0, gate__require_ci=True)
    assert _rule(_verdicts(text, _metrics(ci_low=-1.9)), "CI low") is True
    assert _rule(_verdicts(text, _metrics(ci_low=-2.1)), "CI low") is False
    assert not any(k.startswith("CI low") for k in _verdicts(edited(), _metrics()))


def test_latency_rule():
    text = edited(latency={"batch_sizes": [1, 64]}, gate__latency={"backend": "onnx", "batch": 64, "max_p90_ms": 5.0})
    cells = {"results": [{"backend": "onnx", "batch": 64, "p90_ms": 4.0}, {"backend": "onnx", "batch": 1, "p90_ms": 9.0}]}
    assert _rule(_verdicts(text, _metrics(), cells), "onnx p90") is True
    cells["results"][0]["p90_ms"] = 6.0
    assert _rule(_verdicts(text, _metrics(), cells), "onnx p90") is False


def test_latency_rule_judges_the_fastest_artifact_within_its_budget():
    # The default backend: the quickest student artifact whose accuracy rules passed. INT8 is
    # fastest here; once it misses its budget, the rule judges the next quickest, FP32 ONNX.
    text = edited(latency={"batch_sizes": [64]}, export={"targets": ["onnx", "onnx-int8"], "int8": {"max_drop": 0.5}},
                  gate__latency={"batch": 64, "max_p90_ms": 5.0})
    cells = {"results": [{"backend": "pytorch-eager", "batch": 64, "p90_ms": 9.0},
                         {"backend": "teacher-eager", "batch": 64, "p90_ms": 0.5},  # not a student artifact
                         {"backend": "onnx", "batch": 64, "p90_ms": 6.0},
                         {"backend": "onnx-int8", "batch": 64, "p90_ms": 4.0}]}
    rule = next(r for r in _rules(text, _metrics(int8=89.5), cells) if "latency" in r["rule"])
    assert (rule["backend"], rule["measured"], rule["passed"]) == ("onnx-int8", 4.0, True)
    assert "fastest passing artifact (onnx-int8)" in rule["rule"]
    rule = next(r for r in _rules(text, _metrics(int8=89.4), cells) if "latency" in r["rule"])
    assert (rule["backend"], rule["measured"], rule["passed"]) == ("onnx", 6.0, False)


def test_latency_rule_needs_a_measurement():
    from foundation.errors import ManifestError

    with pytest.raises(ManifestError, match="needs a 'latency' section"):
        manifest_from_text(edited(gate__latency={"max_p90_ms": 5.0}))
    with pytest.raises(ManifestError, match="not in latency.batch_sizes"):
        manifest_from_text(edited(latency={"batch_sizes": [1]}, gate__latency={"batch": 8, "max_p90_ms": 5.0}))


def test_teacher_at_chance_fails_and_says_it_did_not_learn():
    # 10 classes: chance is 10 points, the default floor 1.5 times that. The diverged teacher
    # of the red-team run scored 10.58 and its student passed "within 3 points" of it.
    rules = _rules(edited(gate__max_drop=3.0), _metrics(teacher=10.58, student=8.0))
    teacher = next(r for r in rules if r["rule"].startswith("teacher_top1"))
    assert teacher["passed"] is False and teacher["threshold"] == 15.0
    assert "teacher did not learn" in describe_failures(rules)
    assert _rule(_verdicts(edited(), _metrics(teacher=15.0)), "teacher_top1") is True
    assert _rule(_verdicts(edited(gate__min_teacher_top1=95.0), _metrics(teacher=92.0)), "teacher_top1") is False


def test_student_floor_is_off_by_default_and_applies_when_set():
    assert not any(k.startswith("student_top1 >= min") for k in _verdicts(edited(), _metrics()))
    assert _rule(_verdicts(edited(gate__min_student_top1=91.0), _metrics(student=90.0)), "student_top1 >= min") is False


def test_a_verdict_never_contradicts_its_printed_numbers():
    # INT8 lost exactly the budget: 13.0 against 14.0 - 1.0, which floats make 13.000000000000002.
    text = edited(export={"targets": ["onnx", "onnx-int8"], "int8": {"max_drop": 1.0}})
    metrics = _metrics(student=14.0, teacher=14.0, int8=13.0)
    metrics["student_top1"] = 13.000000000000002 + 1.0
    rule = next(r for r in _rules(text, metrics) if r["rule"].startswith("onnx-int8"))
    assert rule["passed"] is True and f"{rule['measured']:.2f}" == f"{rule['threshold']:.2f}" == "13.00"
    for measured, needed in ((12.996, 13.0), (13.004, 13.0)):  # round to the same printed value: same verdict
        metrics["exports"]["onnx-int8"]["top1"], metrics["student_top1"] = measured, needed + 1.0
        rule = next(r for r in _rules(text, metrics) if r["rule"].startswith("onnx-int8"))
        printed_ok = float(f"{rule['measured']:.2f}") >= float(f"{rule['threshold']:.2f}")
        assert rule["passed"] is printed_ok


def test_a_class_the_student_does_better_on_is_no_drop():
    # class 0: the student is 15 points above the teacher; class 1: 5 below. The worst drop is 5.
    rules = _rules(edited(gate__max_class_drop=10.0), _metrics(per_class_s=(100, 85), per_class_t=(85, 90)))
    rule = next(r for r in rules if "class" in r["rule"])
    assert rule["passed"] and rule["measured"] == 5 and "class 1" in rule["rule"]


def test_a_class_absent_from_the_test_split_is_left_out_of_the_class_rule():
    # per-class top-1 is None for a class with no test image: it neither passes nor fails the rule
    rules = _rules(edited(gate__max_class_drop=3.0), _metrics(per_class_s=(None, 88, 90), per_class_t=(None, 90, 90)))
    rule = next(r for r in rules if "class" in r["rule"])
    assert rule["passed"] and rule["measured"] == 2 and "class 1" in rule["rule"]


def test_the_failure_text_states_the_measured_value_and_the_direction_of_the_threshold():
    text = edited(latency={"batch_sizes": [64]}, gate__latency={"backend": "onnx", "batch": 64, "max_p90_ms": 5.0},
                  gate__max_drop=1.0)
    cells = {"results": [{"backend": "onnx", "batch": 64, "p90_ms": 6.0}]}
    failures = describe_failures(_rules(text, _metrics(student=90.0, teacher=92.0), cells))
    assert "student_top1 >= teacher_top1 - max_drop: measured 90.00, needs >= 91.00" in failures
    assert "onnx p90 latency (ms) at batch 64: measured 6.00, needs <= 5.00" in failures
    assert "min_teacher_top1" not in failures  # a passing rule is not listed
    assert describe_failures([{"rule": "champion", "passed": False, "measured": None, "why": "not comparable"}]) \
        == "champion: not comparable"


def _serving(rows):
    return {"target": "onnx", "engine": "litserve", "replicas": 1,
            "rows": [{"concurrency": c, "p99_ms": p99, "throughput_rps": rps, "failures": failed, "requests": 100}
                     for c, p99, rps, failed in rows]}


def test_serving_rules_judge_the_largest_load_level_unless_told():
    from stagekit.gate_rules import serving_rules

    figures = _serving([(1, 5.0, 100.0, 0), (32, 40.0, 500.0, 0)])
    text = edited(latency={"serving": {"concurrency": [1, 32]}}, gate__serving={"p99_ms": 30.0, "min_throughput": 400})
    config = GateStage.configure(manifest_from_text(text))
    p99, rps = serving_rules(config.gate.serving, figures)
    assert "at concurrency 32" in p99["rule"] and (p99["measured"], p99["passed"]) == (40.0, False)
    assert p99["direction"] == "at_most" and (rps["measured"], rps["passed"]) == (500.0, True)
    text = edited(latency={"serving": {"concurrency": [1, 32]}}, gate__serving={"p99_ms": 30.0, "concurrency": 1})
    (rule,) = serving_rules(GateStage.configure(manifest_from_text(text)).gate.serving, figures)
    assert "at concurrency 1" in rule["rule"] and rule["passed"] and rule["measured"] == 5.0
    (rule,) = serving_rules(config.gate.serving.model_copy(update={"min_throughput": None}),
                            _serving([(32, 40.0, 500.0, 3)]))
    assert rule["why"] == "3 of 100 requests failed"


def test_export_rules_pick_the_onnx_agreement_and_each_budget():
    from stagekit.gate_rules import export_rules

    rules = export_rules(99.0, {"onnx-int8": 0.5}, _metrics(agreement=98.0, int8=89.0))
    assert [(r["target"], r["passed"]) for r in rules] == [("onnx", False), ("onnx-int8", False)]
    rules = export_rules(99.0, {}, _metrics(agreement=99.5, int8=89.0))
    assert [(r["target"], r["passed"]) for r in rules] == [("onnx", True)]  # no budget: int8 not judged


def test_a_rule_records_its_numbers_direction_and_why_only_when_it_fails():
    from stagekit.gate_rules import _rule

    assert _rule("r", 1.234, 1.0, why="because") == {"rule": "r", "measured": 1.23, "threshold": 1.0, "passed": True,
                                                      "direction": "at_least", "measured_exact": 1.234}
    failed = _rule("r", 2.0, 1.0, at_most=True, why="too slow", target="onnx")
    assert failed == {"rule": "r", "measured": 2.0, "threshold": 1.0, "passed": False, "direction": "at_most",
                      "measured_exact": 2.0, "target": "onnx", "why": "too slow"}
    assert "why" not in _rule("r", 0.0, 1.0)


def test_rules_without_exports_latency_or_serving_figures_judge_what_there_is():
    metrics = _metrics()
    del metrics["exports"]
    names = [r["rule"] for r in _rules(edited(), metrics)]
    assert names == ["teacher_top1 >= min_teacher_top1", "student_top1 >= teacher_top1 - max_drop",
                     "onnx_agreement >= min_onnx_agreement"]
    cells = {"results": [{"backend": "onnx", "batch": 1, "p90_ms": 1.0}]}
    assert len(_rules(edited(), _metrics(), cells)) == len(_rules(edited(), _metrics()))  # no latency rule asked
    config = GateStage.configure(manifest_from_text(edited()))
    with_serving = evaluate_rules(config.gate, config.budgets, _metrics(), None, _serving([(32, 9.0, 9.0, 0)]))
    assert len(with_serving) == len(_rules(edited(), _metrics()))  # no serving rule asked


def test_the_latency_rule_reads_the_cell_of_its_backend_at_its_batch():
    text = edited(latency={"batch_sizes": [1, 64]}, gate__latency={"backend": "onnx", "batch": 64, "max_p90_ms": 5.0})
    cells = {"results": [{"backend": "pytorch-eager", "batch": 64, "p90_ms": 1.0},
                         {"backend": "onnx", "batch": 1, "p90_ms": 2.0}, {"backend": "onnx", "batch": 64, "p90_ms": 7.0}]}
    rule = next(r for r in _rules(text, _metrics(), cells) if "p90" in r["rule"])
    assert (rule["measured"], rule["passed"], rule["backend"]) == (7.0, False, "onnx")


def test_a_class_missing_on_one_side_only_is_left_out_and_class_lists_must_match():
    rules = _rules(edited(gate__max_class_drop=3.0), _metrics(per_class_s=(None, 89, 90), per_class_t=(99, 90, 90)))
    assert next(r for r in rules if "class" in r["rule"])["measured"] == 1
    with pytest.raises(ValueError):
        _rules(edited(gate__max_class_drop=3.0), _metrics(per_class_s=(90, 90), per_class_t=(90, 90, 90)))


def test_serving_rules_with_the_gate_and_a_passing_rule_keeps_no_why():
    from stagekit.gate_rules import serving_rules

    text = edited(latency={"serving": {"concurrency": [1, 32]}}, gate__serving={"p99_ms": 30.0, "min_throughput": 400})
    config = GateStage.configure(manifest_from_text(text))
    figures = _serving([(32, 20.0, 500.0, 2)])
    rules = evaluate_rules(config.gate, config.budgets, _metrics(), None, figures)
    served = [r for r in rules if r["rule"].startswith("served onnx")]
    assert [r["rule"].split(": ", 1)[1] for r in served] == ["p99 latency (ms) <= gate.serving.p99_ms",
                                                             "requests/s >= gate.serving.min_throughput"]
    assert all(r["passed"] and "why" not in r for r in served)  # 2 failures, yet within budget: nothing to explain
    assert evaluate_rules(config.gate, config.budgets, _metrics(), None, None) == \
        [r for r in rules if not r["rule"].startswith("served")]  # figures missing: no serving rule
    assert serving_rules(config.gate.serving, figures)[0]["rule"].startswith(
        "served onnx (litserve, 1 replicas) at concurrency 32")


def test_failures_are_joined_and_explained_word_for_word():
    rules = [{"rule": "a", "passed": False, "measured": 1.0, "threshold": 2.0, "direction": "at_least"},
             {"rule": "b", "passed": False, "measured": None},
             {"rule": "c", "passed": False, "measured": 3.0, "threshold": 2.0, "direction": "at_most", "why": "w"},
             {"rule": "d", "passed": True, "measured": 3.0, "threshold": 2.0, "direction": "at_least"}]
    assert describe_failures(rules) == "a: measured 1.00, needs >= 2.00; b: cannot be judged; " \
                                       "c: measured 3.00, needs <= 2.00 (w)"


def test_the_gate_stage_reads_what_its_rules_need(workdir):
    plain = GateStage.configure(manifest_from_text(edited(ship={"dir": "shipped", "promote": "always"})))
    assert plain.champion is None and plain.serving is None and plain.latency is False
    assert GateStage().inputs(plain) == ("validate",)
    text = edited(latency={"serving": {"concurrency": [4]}}, gate__serving={"p99_ms": 30.0})
    full = GateStage.configure(manifest_from_text(text))
    assert full.serving is True and full.latency is True and full.champion is not None
    assert full.champion.against is False  # nothing shipped yet under this name
    assert GateStage().inputs(full) == ("validate", "latency", "serving")
    assert GateStage().inputs(full.model_copy(update={"champion": full.champion.model_copy(update={"against": True})})) \
        == ("validate", "latency", "serving", "champion")


def _champion_case(tmp_path, ours_right: int, theirs_right: int, n: int = 100, *, theirs_labels=None):
    """Predictions files as validate and champion write them: the first k of n samples right."""
    import torch

    from cskd.checkpoint import save_tensors
    from foundation.artifact import Artifact
    from foundation.records import ChampionRecord, ValidationRecord

    labels = torch.zeros(n, dtype=torch.long)

    def logits(right: int):
        out = torch.zeros(n, 3)
        out[:right, 0], out[right:, 1] = 1.0, 1.0  # class 0 (right) for the first ones, class 1 after
        return out

    (tmp_path / "validate").mkdir()
    (tmp_path / "champion").mkdir()
    save_tensors({"labels": labels, "onnx": logits(ours_right)}, tmp_path / "validate" / ValidationRecord.PREDICTIONS)
    save_tensors({"labels": labels if theirs_labels is None else theirs_labels, "champion": logits(theirs_right)},
                 tmp_path / "champion" / ChampionRecord.PREDICTIONS)
    champion = Artifact("champion", "c" * 64, tmp_path / "champion",
                        {"metrics": {"comparable": True, "version": "v3", "top1": theirs_right * 100.0 / n}})
    return tmp_path / "validate", champion


def test_the_champion_rule_passes_within_max_regression_and_fails_beyond_it(tmp_path):
    from stagekit.gate_rules import champion_rule
    from stagekit.gate_section import ChampionRule

    rule = ChampionRule(max_regression=1.0, resamples=200, seed=0, against=True)
    validate_dir, champion = _champion_case(tmp_path, ours_right=89, theirs_right=90)
    result = champion_rule(rule, validate_dir, champion)
    assert result["rule"] == "onnx_top1 >= champion v3 top1 - max_regression"
    assert (result["measured"], result["threshold"], result["passed"]) == (89.0, 89.0, True)
    assert result["champion"]["version"] == "v3" and result["champion"]["top1"] == 90.0
    assert result["champion"]["student_top1"] == 89.0 and result["champion"]["samples"] == 100
    boot = result["champion"]["bootstrap"]
    assert boot["ci_low"] <= -1.0 <= boot["ci_high"]
    # one discordant image (the champion right, ours wrong): the exact two-sided p of 0 of 1 is 1
    test = result["champion"]["mcnemar"]
    assert (test["only_a"] + test["only_b"], min(test["only_a"], test["only_b"])) == (1, 0)
    assert test["p_value"] == pytest.approx(stats.binomtest(0, 1).pvalue)
    worse = champion_rule(rule.model_copy(update={"max_regression": 0.5}), validate_dir, champion)
    assert worse["passed"] is False and worse["threshold"] == 89.5
    assert worse["why"].startswith("worse than the shipped champion v3 (90.00); nothing ships and latest stays on v3")


def test_the_champion_rule_without_a_champion_or_not_comparable_or_other_images(tmp_path):
    import torch

    from stagekit.gate_rules import GateError, champion_rule
    from stagekit.gate_section import ChampionRule

    none = champion_rule(ChampionRule(max_regression=0.0, resamples=10, seed=0, against=False), tmp_path, None)
    assert none["passed"] is True and none["measured"] is None and none["rule"].startswith(
        "not worse than the champion: none to compare with")
    rule = ChampionRule(max_regression=0.0, resamples=10, seed=0, against=True)
    (tmp_path / "a").mkdir()
    validate_dir, champion = _champion_case(tmp_path / "a", 50, 50)
    champion.record["metrics"].update({"comparable": False, "why": "another input shape"})
    result = champion_rule(rule, validate_dir, champion)
    assert result["passed"] is False and result["measured"] is None and result["threshold"] is None
    assert result["why"] == ("another input shape: not comparable; promote it by hand (`cskd-pipeline promote`) or "
                             "set ship.promote: always")
    (tmp_path / "b").mkdir()
    validate_dir, champion = _champion_case(tmp_path / "b", 50, 50, theirs_labels=torch.ones(100, dtype=torch.long))
    with pytest.raises(GateError, match="champion v3 was evaluated on other test images than this run's; rerun"):
        champion_rule(rule, validate_dir, champion)
    (tmp_path / "c").mkdir()
    validate_dir, champion = _champion_case(tmp_path / "c", 60, 50)
    better = champion_rule(rule, validate_dir, champion)
    assert better["passed"] and better["measured"] == 60.0 and better["threshold"] == 50.0 and "why" not in better


def test_an_export_with_non_finite_logits_fails_a_rule_of_its_own_that_says_how_many():
    from stagekit.gate_rules import export_rules

    metrics = _metrics(int8=89.5)
    metrics["samples"] = 400
    metrics["exports"]["onnx-int8"]["nonfinite"] = 7
    rules = export_rules(99.0, {"onnx-int8": 100.0}, metrics)
    broken = next(r for r in rules if "non-finite" in r["rule"])
    assert broken == {"rule": "onnx-int8: test images with non-finite logits == 0", "measured": 7.0,
                      "threshold": 0.0, "passed": False, "direction": "at_most", "measured_exact": 7.0,
                      "target": "onnx-int8",
                      "why": "onnx-int8 computed NaN or infinite logits on 7 of 400 test images; they count as "
                             "wrong predictions"}
    metrics["exports"]["onnx-int8"]["nonfinite"] = 0
    assert not any("non-finite" in r["rule"] for r in export_rules(99.0, {"onnx-int8": 100.0}, metrics))


@pytest.mark.parametrize(("changes", "says"), [
    ({"gate__latency": {"max_p90_ms": 5}}, "gate.latency needs a 'latency' section that measures it"),
    ({"latency": {"batch_sizes": [1]}, "gate__latency": {"max_p90_ms": 5, "batch": 64}},
     "gate.latency.batch 64 is not in latency.batch_sizes"),
    ({"latency": {"batch_sizes": [1]}, "gate__latency": {"max_p90_ms": 5, "backend": "onnx-int8"}},
     "gate.latency.backend 'onnx-int8' is not in export.targets"),
    ({"gate__serving": {"p99_ms": 50}}, "gate.serving needs a 'latency.serving' section that measures it"),
    ({"latency": {"serving": {"concurrency": [1, 32]}}, "gate__serving": {"p99_ms": 50, "concurrency": 8}},
     "gate.serving.concurrency 8 is not in latency.serving.concurrency"),
])
def test_a_gate_rule_that_nothing_measures_is_refused_with_what_to_add(changes, says):
    from stagekit.gate_section import _measurable

    with pytest.raises(ManifestError, match=re.escape(says)):
        manifest_from_text(edited(**changes))
    fine = manifest_from_text(edited(latency={"batch_sizes": [1], "serving": {"concurrency": [1, 32]}},
                                     gate__latency={"max_p90_ms": 5, "backend": "fastest"},
                                     gate__serving={"p99_ms": 50, "concurrency": 32}))
    assert _measurable(fine) is None


@pytest.mark.parametrize("backend", ["pytorch-eager", "fastest", "onnx"])
def test_the_latency_rule_takes_the_eager_student_the_fastest_or_a_target(backend):
    text = edited(latency={"batch_sizes": [1]}, gate__latency={"max_p90_ms": 5, "backend": backend})
    assert manifest_from_text(text).gate.latency.backend == backend
    with pytest.raises(ManifestError, match="unknown export target 'tensorflow'"):
        manifest_from_text(edited(latency={"batch_sizes": [1]}, gate__latency={"max_p90_ms": 5,
                                                                                "backend": "tensorflow"}))
