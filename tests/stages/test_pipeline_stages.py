"""Stages as stages: exact cache keys, every CPU back-end through a real run, and plug-ins
(a back-end missing, a loss registered by a test) going through the registries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.manifest_io import manifest_from_text
from pipeline.orchestrator import plan
from tests.conftest import edited, working_dir, write_manifest

ALL_CPU_TARGETS = ["onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8"]
# operators: weighted: the choice `auto` makes (and the QAD simulation it exports to make it) is
# test_int8_defaults.py's subject, not this file's
FULL = edited(export={"targets": ALL_CPU_TARGETS, "int8": {"calibration_images": 128, "max_drop": 100.0,
                                                           "operators": "weighted"},
                      "fp16_max_drop": 100.0, "openvino": {"max_drop": 100.0}},
              latency={"batch_sizes": [1, 16], "runs": 100, "warmup": 2})

DOWNSTREAM_OF_STUDENT = {"distill", "export", "export_fp16", "qad", "quantize", "openvino", "openvino_int8", "validate",
                         "latency", "gate", "ship"}
# manifest edit (dotted path, value) -> the stages whose id must change (all others stay cached)
EDITS = [
    ("data__max_test_samples", 50, {"validate", "gate", "ship"}),
    ("data__download", True, set()),
    ("validate__seed", 1, {"validate", "gate", "ship"}),
    ("validate__bootstrap_resamples", 500, {"validate", "gate", "ship"}),
    ("student__train__epochs", 3, DOWNSTREAM_OF_STUDENT),
    ("export__int8__max_drop", 2.0, {"quantize", "openvino_int8", "validate", "latency", "gate", "ship"}),  # not qad
    ("export__int8__qad__epochs", 3, {"qad", "quantize", "openvino_int8", "validate", "latency", "gate", "ship"}),
    ("export__int8__qad__when", "always", {"quantize", "openvino_int8", "validate", "latency", "gate", "ship"}),
    ("export__int8__calibration_images", 256, {"qad", "quantize", "openvino_int8", "validate", "latency", "gate",
                                               "ship"}),
    ("export__openvino__max_drop", 1.0, {"gate", "ship"}),
    ("export__fp16_max_drop", 1.0, {"gate", "ship"}),
    ("export__trt__max_drop", 1.0, set()),  # no trt target: nothing reads it
    ("gate__max_drop", 5.0, {"gate", "ship"}),
    ("latency__runs", 200, {"latency", "gate", "ship"}),
    ("report__dir", "other-reports", set()),
    ("ship__dir", "other-shipped", set()),
    ("data__max_train_samples", 500, {"teacher"} | DOWNSTREAM_OF_STUDENT),
]


def _with(text: str, dotted: str, value) -> str:
    import yaml

    data = yaml.safe_load(text)
    node = data
    *parents, leaf = dotted.split("__")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize(("dotted", "value", "expected"), EDITS, ids=[e[0] for e in EDITS])
def test_each_edit_reruns_exactly_what_reads_it(dotted, value, expected, workdir):
    base = {p.kind: p.id for p in plan(manifest_from_text(FULL))}
    after = {p.kind: p.id for p in plan(manifest_from_text(_with(FULL, dotted, value)))}
    assert set(after) == set(base)
    assert {kind for kind in base if base[kind] != after[kind]} == expected


def test_plan_after_a_real_run_shows_only_validation_to_run(shipped_run, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(shipped_run[0], folder, symlinks=True)  # other tests ship other lineages into the original
    monkeypatch.chdir(folder)
    assert CliRunner().invoke(main, ["promote", "tiny", "v1"]).exit_code == 0  # the champion is this lineage
    changed = write_manifest(folder, edited(data__max_test_samples=100), "fewer-test.yaml")
    result = CliRunner().invoke(main, ["plan", "-m", str(changed)])
    to_run = {line.split()[0] for line in result.output.splitlines() if line.endswith("to run")}
    assert result.exit_code == 0 and to_run == {"validate", "gate", "ship"}, result.output


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The tiny manifest with every CPU back-end and the latency stage, run once."""
    folder = tmp_path_factory.mktemp("full")
    with working_dir(folder):
        manifest = write_manifest(folder, FULL)
        result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
        yield folder, result


def test_every_cpu_backend_is_built_validated_timed_and_shipped(full_run):
    folder, result = full_run
    assert result.exit_code == 0, result.output
    for kind in ("export_fp16", "quantize", "openvino", "openvino_int8", "latency"):
        assert f"[{kind:<8}] ran" in result.output
    report = json.loads((folder / "reports" / "tiny" / "latest" / "report.json").read_text())
    exports = report["metrics"]["exports"]
    assert set(exports) == set(ALL_CPU_TARGETS)
    # Every back-end computes the same network: it agrees with the PyTorch student nearly always.
    assert exports["openvino"]["agreement"] >= 99.0 and exports["openvino"]["max_logit_diff"] < 1e-3
    assert exports["onnx-fp16"]["agreement"] >= 95.0 and exports["openvino-int8"]["agreement"] >= 80.0
    cells = {(r["backend"], r["batch"]) for r in report["latency"]["results"]}
    assert cells == {(b, n) for b in ["pytorch-eager", "teacher-eager", "teacher-onnx", *ALL_CPU_TARGETS]
                     for n in (1, 16)}
    # every model timed in the same interleaved rounds, each with the spread of its round p50s
    assert all(len(c["round_p50_ms"]) == c["rounds"] == 5 and c["spread_ms"] == max(c["round_p50_ms"]) -
               min(c["round_p50_ms"]) for c in report["latency"]["results"])
    # The headline compares like with like: the teacher in ONNX Runtime FP32 against each file.
    teacher, *files = report["deployables"]
    p50 = {(c["backend"], c["batch"]): c["p50_ms"] for c in report["latency"]["results"]}
    assert teacher["runtime"] == "teacher-onnx" and "ONNX Runtime" in teacher["timed_in"]
    assert teacher["p50_ms"] == {"1": p50[("teacher-onnx", 1)], "16": p50[("teacher-onnx", 16)]}
    for row in files:
        for b, ratio in row["faster"].items():
            assert ratio == p50[("teacher-onnx", int(b))] / p50[(row["runtime"], int(b))]
    gate_rules = {r["rule"] for r in report["gate"]["rules"]}
    assert {f"{t}_top1 >= student_top1 - {t} budget" for t in ALL_CPU_TARGETS if t != "onnx"} <= gate_rules
    fastest = report["fastest"]
    assert set(fastest) == {"1", "16"} and all(f["backend"] in ["pytorch-eager", *ALL_CPU_TARGETS]
                                               for f in fastest.values())
    shipped = {p.name for p in (folder / "shipped" / "tiny" / "latest").iterdir()}
    assert {"student_fp16.onnx", "student_int8.onnx", "student_openvino.xml", "student_openvino.bin",
            "student_openvino_int8.xml", "student_openvino_int8.bin"} <= shipped


def test_fastest_artifact_must_pass_its_budget(full_run):
    from pipeline.report import fastest

    latency = {"results": [{"backend": "onnx", "batch": 1, "p50_ms": 2.0}, {"backend": "onnx-int8", "batch": 1,
                                                                              "p50_ms": 1.0}]}
    passing = {"rules": [{"rule": "onnx-int8 budget", "target": "onnx-int8", "passed": True}]}
    assert fastest(latency, passing)["1"]["backend"] == "onnx-int8"
    passing["rules"][0]["passed"] = False
    assert fastest(latency, passing)["1"]["backend"] == "onnx"


def test_diff_of_two_timings_of_the_same_models_shows_only_latencies_beyond_their_noise(full_run):
    """The same models timed twice (``--force latency``): ``diff`` shows a latency only where the two
    runs' round ranges do not overlap, with its change; ``--all`` shows the others, marked."""
    from exports.latency import within_noise

    folder, _ = full_run
    with working_dir(folder):
        forced = CliRunner().invoke(main, ["run", "-m", "tiny.yaml", "--quiet", "--force", "latency"])
        assert forced.exit_code == 0, forced.output
        runs = json.loads(CliRunner().invoke(main, ["runs", "-m", "tiny.yaml", "--json"]).output)
        first, last = runs[0]["run"], runs[-1]["run"]
        shown = CliRunner().invoke(main, ["diff", first, last]).output.splitlines()
        everything = CliRunner().invoke(main, ["diff", first, last, "--all"]).output.splitlines()
    reports = [json.loads(Path(r["report"]).read_text()) for r in (runs[0], runs[-1])]
    cells = [{(c["backend"], c["batch"]): c for c in r["latency"]["results"]} for r in reports]
    assert shown[0] == f"| setting or metric | {first} | {last} | change |"
    for (backend, batch), cell in cells[0].items():
        key = f"| `latency.{backend}.batch{batch}.p50_ms` |"
        row = [line for line in shown if line.startswith(key)]
        assert bool(row) == (not within_noise(cell, cells[1][(backend, batch)])), (key, row)
        (full,) = [line for line in everything if line.startswith(key)]
        assert full.endswith("(within noise) |") == within_noise(cell, cells[1][(backend, batch)])
    assert not any("manifest." in line for line in shown[2:])  # the same manifest: no setting differs
    assert len(everything) > len(shown)


def test_openvino_missing_is_exit_3_with_one_line(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    manifest = write_manifest(workdir, edited(export={"targets": ["onnx", "openvino"]}))
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "OpenVINO is not installed" in result.output and result.output.count("\n") == 1
    assert not (workdir / ".cskd" / "artifacts").exists()  # refused before any compute


def test_a_loss_registered_by_a_test_runs_through_the_distill_stage(workdir):
    import torch.nn.functional as F

    from cskd.loss_registry import LossConfig, register_loss, registered_losses, unregister_loss
    from cskd.objectives import Objective

    def l1_logits(student_logits, teacher_logits):  # the pure function: [B, C], [B, C] -> scalar
        return (student_logits - teacher_logits).abs().mean()

    class L1Loss(LossConfig):
        kind: Literal["l1-test"]
        weight: float = 0.5

    class L1Objective(Objective):
        def __init__(self, student, teacher, *, weight):
            super().__init__(student, teacher)
            self.weight = weight

        def forward(self, images, labels, *, strong=None, epoch=None):
            zs = self.student(images)
            ce, l1 = F.cross_entropy(zs, labels), self.weight * l1_logits(zs.float(), self.teacher_logits(images))
            return {"loss": ce + l1, "output": zs, "ce": ce, "l1": l1}

    register_loss(L1Loss)(lambda cfg, student, teacher: L1Objective(student, teacher, weight=cfg.weight))
    try:
        manifest = write_manifest(workdir, edited(student__loss={"kind": "l1-test", "weight": 0.25}))
        result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        distill = next((workdir / ".cskd" / "artifacts" / "distill").iterdir())
        record = json.loads((distill / "artifact.json").read_text())
        assert record["config"]["loss"] == {"kind": "l1-test", "weight": 0.25}
        history = [json.loads(line) for line in (distill / "metrics.jsonl").read_text().splitlines()]
        assert all(row["l1"] > 0 for row in history)  # the registered loss's term was trained on
    finally:
        unregister_loss("l1-test")
    assert "l1-test" not in registered_losses()
