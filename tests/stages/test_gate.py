"""Each gate rule passes and fails on its own numbers."""

from __future__ import annotations

import pytest

from pipeline.manifest_io import manifest_from_text
from stages.gate import evaluate_rules
from tests.conftest import edited


def _metrics(student=90.0, teacher=92.0, agreement=100.0, int8=89.5, per_class_s=(90, 80), per_class_t=(90, 90),
             ci_low=-3.0):
    models = {"student": {"per_class": list(per_class_s)}, "teacher": {"per_class": list(per_class_t)}}
    return {"student_top1": student, "teacher_top1": teacher, "onnx_agreement": agreement,
            "exports": {"onnx": {"top1": student}, "onnx-int8": {"top1": int8}}, "models": models,
            "student_vs_teacher": {"bootstrap": {"ci_low": ci_low, "confidence": 0.95}}}


def _verdicts(manifest_text, metrics, latency=None):
    return {r["rule"]: r["passed"] for r in evaluate_rules(manifest_from_text(manifest_text), metrics, latency)}


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
    rules = evaluate_rules(manifest_from_text(text), _metrics(per_class_s=(90, 80), per_class_t=(90, 90)))
    rule = next(r for r in rules if "class" in r["rule"])
    assert rule["passed"] and rule["measured"] == 10 and "class 1" in rule["rule"]
    rules = evaluate_rules(manifest_from_text(edited(gate__max_class_drop=9.0)), _metrics())
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


def test_latency_rule_needs_a_measurement():
    from pipeline.errors import ManifestError

    with pytest.raises(ManifestError, match="needs a 'latency' section"):
        manifest_from_text(edited(gate__latency={"max_p90_ms": 5.0}))
    with pytest.raises(ManifestError, match="not in latency.batch_sizes"):
        manifest_from_text(edited(latency={"batch_sizes": [1]}, gate__latency={"batch": 8, "max_p90_ms": 5.0}))
