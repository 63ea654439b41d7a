"""Typed stage records (foundation/records.py): each role is played by exactly one registered
stage, a stage's new record is checked against the model it declares before it is committed, and
the layer above the stages names no stage kind and no file a stage writes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

import stages  # noqa: F401 - registers every stage
from foundation.contracts import registered_stages
from foundation.errors import EXIT_RUNTIME
from foundation.records import (
    BundleRecord,
    LatencyRecord,
    QuantizationRecord,
    ServingRecord,
    StudentRecord,
    TeacherRecord,
    TrainedRecord,
    ValidationRecord,
    VerdictRecord,
    kind_of,
)
from pipeline.cli import main
from tests.conftest import REPO

PLAYED_BY = {TeacherRecord: "teacher", StudentRecord: "distill", ValidationRecord: "validate",
             LatencyRecord: "latency", ServingRecord: "serving", QuantizationRecord: "quantize",
             VerdictRecord: "gate", BundleRecord: "ship"}


def test_each_role_is_played_by_exactly_one_registered_stage():
    assert {role: kind_of(role) for role in PLAYED_BY} == PLAYED_BY
    for role, kind in PLAYED_BY.items():  # the stage declares its own record, with the role's fields
        assert issubclass(registered_stages()[kind].Record, role)


def test_a_record_that_does_not_fit_the_declared_model_is_not_committed(tiny_trained, workdir, monkeypatch):
    from stages.gate import GateStage

    class Stricter(VerdictRecord):
        reviewer: str  # no gate writes it

    monkeypatch.setattr(GateStage, "Record", Stricter)
    gates = workdir / ".cskd" / "artifacts" / "gate"
    stored = sorted(p.name for p in gates.iterdir())
    # the stages before the gate come from the store; the gate (another threshold) is computed
    result = CliRunner().invoke(main, ["run", "-m", str(tiny_trained), "--quiet", "-o", "gate.max_drop=99.0"])
    assert result.exit_code == EXIT_RUNTIME, result.output
    assert "the gate stage's metrics do not fit its Stricter: reviewer: Field required" in result.output
    assert list((workdir / ".cskd" / "artifacts" / "validate").glob("*/artifact.json"))  # the stages before it
    assert sorted(p.name for p in gates.iterdir() if (p / "artifact.json").is_file()) == stored  # no new one
    assert not (workdir / "shipped").exists()


def test_a_stored_record_that_no_longer_fits_its_model_is_one_line_with_the_fix(tiny_trained, monkeypatch):
    """A record model made stricter without a stage version bump: the cached verdict is refused
    with one line naming the artifact and the command that recomputes it (not pydantic's dump)."""
    from stages.gate import GateStage

    class Stricter(VerdictRecord):
        reviewer: str

    monkeypatch.setattr(GateStage, "Record", Stricter)
    result = CliRunner().invoke(main, ["run", "-m", str(tiny_trained), "--quiet"])  # the gate is cached
    assert result.exit_code == EXIT_RUNTIME, result.output
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "the stored gate artifact" in errors[0] and "Stricter (reviewer: Field required)" \
        in errors[0] and "cskd-pipeline run --force gate" in errors[0], result.output


@pytest.mark.parametrize("passed", ["true", 1, "yes"])
def test_a_verdict_passes_only_on_true_itself(passed):
    from foundation.records import find

    class Verdict:  # an artifact as the store hands it out: its metrics as recorded
        metrics = {"passed": passed, "rules": []}

    with pytest.raises(ValueError, match="passed"):
        find({kind_of(VerdictRecord): Verdict()}, VerdictRecord)
    Verdict.metrics = {"passed": True, "rules": []}
    assert find({kind_of(VerdictRecord): Verdict()}, VerdictRecord).record.passed is True


def _top_layer() -> list[Path]:
    return sorted((REPO / "pipeline").glob("*.py"))  # foundation is below the stages


def _named_kinds(tree: ast.AST, kinds: set[str]) -> list[str]:
    """String constants naming a stage kind where the code looks an artifact up by it: an index or
    ``.get`` on something called artifacts, ``until=``, or a comparison with a ``.kind``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and "artifacts" in ast.unparse(node.value):
            candidates = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and "artifacts" in ast.unparse(node.func.value):
            candidates = node.args[:1]
        elif isinstance(node, ast.Call):
            candidates = [k.value for k in node.keywords if k.arg == "until"]
        elif isinstance(node, ast.Compare) and ".kind" in ast.unparse(node):
            candidates = [node.left, *node.comparators]
        else:
            continue
        found += [f"{c.value!r} (line {c.lineno})" for c in candidates
                  if isinstance(c, ast.Constant) and c.value in kinds]
    return found


def _problems(tree: ast.AST) -> list[str]:
    kinds = set(registered_stages())
    files = {ValidationRecord.PREDICTIONS, TrainedRecord.WEIGHTS, TrainedRecord.HISTORY, BundleRecord.CARD}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == "_UNMARKED_OUTPUTS" for t in node.targets):
            node.value = ast.Constant(None)  # history: what versions before markers wrote, by name
    return [f"stage kind {k}" for k in _named_kinds(tree, kinds)] + [
        f"file {node.value!r} (line {node.lineno})" for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in files]


def test_the_layer_above_the_stages_names_no_stage_kind_and_no_stage_file():
    problems = [f"{path.name}: {problem}" for path in _top_layer() for problem in _problems(ast.parse(path.read_text()))]
    assert len(_top_layer()) >= 15 and not problems, "\n".join(problems)


@pytest.mark.parametrize("source", [
    'artifacts["validate"].metrics', 'outcome.artifacts.get("ship")', 'run_pipeline(m, until="teacher")',
    'step.kind == "ship"', 'path = folder / "model_card.json"', 'a.file("predictions.safetensors")'])
def test_the_scan_catches_each_way_of_naming_a_stage_or_its_file(source):
    assert _problems(ast.parse(source))
