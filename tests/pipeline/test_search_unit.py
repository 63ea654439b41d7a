"""The search's decisions without training: which file it chooses, the Pareto front, the halving
rungs, the manifest each candidate runs with and the one that ships (``pipeline/search*.py``); and
one quick search of one candidate through every step."""

from __future__ import annotations

import pytest
import yaml

from foundation.errors import ManifestError
from pipeline.manifest_io import load_manifest
from pipeline.search import choose, pareto
from pipeline.search_cells import candidate_manifest, rungs
from tests.conftest import edited, write_manifest


def _point(candidate: str, top1: float, p90: float, *, within: bool = True, size: float = 1.0, target="onnx"):
    return {"candidate": candidate, "target": target, "top1": top1, "p90_ms": p90, "size_mb": size,
            "within_budget": within, "why": "" if within else "over"}


def test_the_most_accurate_file_within_the_budget_is_chosen_never_one_over_it():
    points = [_point("wide", 92.0, 3.0, within=False), _point("small", 74.0, 0.5), _point("mid", 80.0, 0.9),
              _point("mid", 80.0, 0.7, target="onnx-int8")]
    chosen = choose(points)
    assert (chosen["candidate"], chosen["target"]) == ("mid", "onnx-int8")  # equally accurate: the quicker
    assert choose([_point("wide", 92.0, 3.0, within=False)]) is None


def test_the_front_holds_the_points_nothing_beats_on_every_axis():
    points = [_point("a", 90.0, 2.0), _point("b", 80.0, 1.0), _point("c", 79.0, 1.5), _point("d", 80.0, 1.0, size=3.0)]
    assert [p["candidate"] for p in pareto(points)] == ["a", "b"]  # c is slower and worse than b; d larger


@pytest.mark.parametrize(("first", "factor", "full", "expected"), [
    (1, 2, 5, [1, 2, 4, 5]), (3, 2, 10, [3, 6, 10]), (10, 2, 10, [10]), (2, 3, 20, [2, 6, 18, 20])])
def test_halving_rungs_grow_by_the_factor_up_to_the_full_epochs(first, factor, full, expected):
    assert rungs(first, factor, full) == expected


SEARCH = {"candidates": ["resnet8", {"model": "resnet8x4", "label": "wide", "train": {"epochs": 5, "lr": 0.02}}],
          "budget": {"latency": {"batch": 4, "max_p90_ms": 2.5}}}


def test_each_candidate_runs_the_manifest_with_its_student_and_the_budget_batch_timed(workdir):
    base = load_manifest(write_manifest(workdir, edited(search=SEARCH, latency={"batch_sizes": [1, 64]})))
    wide = candidate_manifest(base, base.search.candidates[1])
    assert wide.student.model == "resnet8x4" and wide.student.train.epochs == 5 and wide.student.train.lr == 0.02
    assert wide.student.train.batch_size == base.student.train.batch_size  # the rest as the manifest says
    assert wide.latency.batch_sizes == [1, 4, 64] and wide.teacher == base.teacher
    assert candidate_manifest(base, base.search.candidates[1], epochs=2).student.train.epochs == 2  # a rung
    shipped = candidate_manifest(base, base.search.candidates[0], chosen={"target": "onnx", "note": "search x"})
    assert shipped.gate.latency.backend == "onnx" and shipped.gate.latency.max_p90_ms == 2.5
    assert shipped.gate.latency.batch == 4 and shipped.ship.chosen_by == "search x"
    assert candidate_manifest(base, base.search.candidates[0]).ship.chosen_by is None


def test_a_candidate_setting_that_does_not_validate_names_the_candidate(workdir):
    bad = {**SEARCH, "candidates": [{"model": "resnet8", "train": {"epochs": -1}}]}
    base = load_manifest(write_manifest(workdir, edited(search=bad)))
    with pytest.raises(ManifestError, match=r"search.candidates: resnet8: student.train.epochs"):
        candidate_manifest(base, base.search.candidates[0])


def test_the_search_section_takes_bare_names_and_refuses_a_repeated_one(workdir):
    base = load_manifest(write_manifest(workdir, edited(search=SEARCH)))
    assert [c.name for c in base.search.candidates] == ["resnet8", "wide"]
    assert base.search.halving is None and base.search.prescreen_slack == 0.1
    twice = yaml.safe_dump({**yaml.safe_load(edited()), "search": {**SEARCH, "candidates": ["resnet8", "resnet8"]}})
    with pytest.raises(ManifestError, match="appears twice"):
        load_manifest(write_manifest(workdir, twice))


def test_a_one_candidate_search_runs_every_step_and_reruns_from_the_store(workdir):
    """The quick end-to-end path `make test` keeps (test_search.py, in test-slow, holds the choice
    between candidates): teacher, probe, cell, timing, report; the rerun recomputes and re-times nothing."""
    import json

    from click.testing import CliRunner

    from pipeline.cli import main

    search = {"candidates": [{"model": "resnet8", "train": {"epochs": 1}}],
              "budget": {"latency": {"batch": 1, "max_p90_ms": 1000}}}
    write_manifest(workdir, edited(search=search))
    first = CliRunner().invoke(main, ["search", "-m", "tiny.yaml", "--no-ship"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["search", "-m", "tiny.yaml", "--no-ship"])
    assert again.exit_code == 0 and "probe resnet8" in again.output and "(cached)" in again.output, again.output
    document = json.loads((workdir / "reports" / "tiny" / "search.json").read_text())
    (row,) = document["candidates"]
    assert row["status"] == "trained" and row["cached"] and document["chosen"]["candidate"] == "resnet8"
    assert document["shipped"] is None and not (workdir / "shipped").exists()  # --no-ship
    assert "| resnet8 | onnx |" in again.output and "**chosen**" in again.output
