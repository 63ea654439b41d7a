"""The INT8 defaults: ``operators: auto`` quantizes every operator where QAD can simulate it and
the budget holds; ``export.cpu`` decides 7-bit weights and the kernels the budget is checked
with; ``targets: auto`` takes what is installed here."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cskd.data import load_dataset
from cskd.models import Preprocessed, create_model
from exports.int8_fallback import quantize_with_fallback
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from exports.quantize import Int8Settings, preprocess
from pipeline.cli import main
from tests.conftest import edited, working_dir, write_manifest


def _quantize_of(folder: Path) -> dict:
    """The quantize artifact committed last, as the card shows it."""
    records = [json.loads(p.read_text()) for p in (folder / ".cskd").glob("artifacts/quantize/*/artifact.json")]
    return max(records, key=lambda r: r["committed_at"])["metrics"]


@pytest.mark.parametrize("student,chosen,why", [
    ("resnet8", "all", "agrees with the QDQ model"),
    # a pre-activation WRN keeps a BatchNorm after each residual sum as an operator of its own:
    # operators all quantizes it, and the QAD simulation does not model it
    ("wrn_16_2", "weighted", "not simulated exactly"),
])
def test_operators_auto_quantizes_everything_only_where_qad_simulates_it(shipped_run, student, chosen, why):
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")  # teacher (and the resnet8 student) cached
    with working_dir(folder):
        int8 = {"max_drop": 100.0, "qad": {"when": "never"}}  # the budget holds: the simulation decides
        text = edited(student__model=student, student__train__epochs=1,
                      export={"targets": ["onnx", "onnx-int8"], "int8": int8})
        result = CliRunner().invoke(main, ["export", "-m", str(write_manifest(folder, text)), "--target", "onnx-int8"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = _quantize_of(folder)
    assert card["operators"] == chosen and card["operators_choice"]["chosen"] == chosen
    assert why in card["operators_choice"]["why"]
    assert f"operators {chosen}" in result.output  # the stage's line says it too


def test_operators_auto_falls_back_to_weighted_when_all_misses_the_budget(shipped_run):
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")
    with working_dir(folder):
        # int8 activations on every operator lose something; a negative budget cannot be written,
        # so the stage is asked for zero loss and its fallback is allowed to keep nodes in float
        int8 = {"activation_type": "int8", "max_drop": 0.0, "qad": {"when": "never"}, "fallback": True}
        text = edited(export={"targets": ["onnx", "onnx-int8"], "int8": int8})
        result = CliRunner().invoke(main, ["export", "-m", str(write_manifest(folder, text)), "--target", "onnx-int8"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = _quantize_of(folder)
    choice = card["operators_choice"]
    if choice["all_drop"] > 0:
        assert choice["chosen"] == "weighted" and card["operators"] == "weighted"
        assert "budget 0.0" in choice["why"]
    else:  # every operator in INT8 lost nothing: all holds a zero budget
        assert choice["chosen"] == "all"
    assert card["val_drop"] <= 0.0


def _quantize_config(workdir: Path, **export):
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    text = edited(export={"targets": ["onnx", "onnx-int8"], **export})
    return next(p for p in plan(load_manifest(write_manifest(workdir, text))) if p.kind == "quantize")


@pytest.mark.parametrize("cpu,reduce_range", [("avx2", True), ("any", True), ("vnni", False)])
def test_the_deployment_cpu_decides_7_bit_weights(workdir, cpu, reduce_range):
    step = _quantize_config(workdir, cpu=cpu)
    assert step.config.cpu == cpu and step.config.int8.reduce_range is reduce_range


def test_an_explicit_reduce_range_wins_and_the_cpu_class_is_in_the_id(workdir):
    assert _quantize_config(workdir, cpu="avx2", int8={"reduce_range": False}).config.int8.reduce_range is False
    ids = {_quantize_config(workdir, cpu=cpu).id for cpu in ("vnni", "avx2", "any")}
    assert len(ids) == 3


def test_auto_resolves_to_this_machines_class(workdir):
    from exports.cpu import cpu_flags, machine_class

    flags = cpu_flags()
    expected = ("vnni" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "avx2" if "avx2" in flags else "any")
    assert machine_class() == expected
    assert _quantize_config(workdir).config.cpu == expected


@pytest.mark.parametrize("deploy,machine,exact_graph,flagged", [
    ("vnni", "avx2", True, False),  # VNNI computes the graph exactly: check it that way on an AVX2 machine
    ("vnni", "vnni", False, False),
    ("avx2", "vnni", False, True),  # AVX2 saturation with 8-bit weights cannot be reproduced on VNNI
    ("avx2", "avx2", False, False),
])
def test_the_budget_is_checked_with_the_deployment_cpus_kernels(monkeypatch, deploy, machine, exact_graph, flagged):
    import stagekit.int8_settings

    monkeypatch.setattr(stagekit.int8_settings, "machine_class", lambda: machine)  # which machine this is
    check = stagekit.int8_settings.cpu_check(deploy, reduce_range=False)
    assert check["exact_graph"] is exact_graph and check["machine"] == machine and check["class"] == deploy
    assert (check["flag"] is not None) is flagged
    # with 7-bit weights every class computes the graph exactly: nothing to emulate or flag
    exact = stagekit.int8_settings.cpu_check(deploy, reduce_range=True)
    assert exact["exact_graph"] is False
    # ... but a check on another class's kernels says so: flagged exactly when the classes differ
    assert (exact["flag"] is None) is (deploy == machine)
    assert exact["flag"] is None or f"not on a {deploy} CPU's" in exact["flag"]


def test_exact_graph_judges_the_int8_model_by_its_qdq_graph(tmp_path):
    """The budget check of a VNNI deployment on an AVX2 machine: the QDQ graph run as written."""
    ds = load_dataset("digits")
    torch.manual_seed(0)
    net = Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=ds.mean, std=ds.std).eval()
    fp32 = preprocess(export_onnx(net, sample=torch.zeros(2, 1, 8, 8), path=tmp_path / "fp32.onnx"),
                      tmp_path / "prepared.onnx")
    images = ds.train.head(300).numpy()
    labels = ds.train.labels[:300].numpy()
    args = {"calibration_images": images[:64].astype(np.float32) / 255.0, "val_images_u8": images,
            "val_labels": labels, "settings": Int8Settings(), "budget": 100.0}
    report = quantize_with_fallback(fp32, tmp_path / "int8.onnx", **args, exact_graph=True)
    graph = run_batched(create_session(tmp_path / "int8.onnx", optimize=False), images)
    assert report.int8_top1 == pytest.approx(float((graph.argmax(1) == labels).mean() * 100))


def test_targets_auto_takes_the_openvino_targets_when_openvino_is_installed(workdir):
    pytest.importorskip("openvino")
    path = write_manifest(workdir, edited(export={"targets": "auto"}))
    result = CliRunner().invoke(main, ["plan", "-m", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages_planned = [line.split()[0] for line in result.output.splitlines() if not line.startswith("[")]
    assert {"export", "quantize", "openvino", "openvino_int8"} <= set(stages_planned)
    lines = [line for line in result.output.splitlines() if line.startswith("[targets ]")]
    assert len(lines) <= 1 and all("openvino" not in line.split("left out")[-1] for line in lines)


def test_targets_auto_leaves_out_openvino_when_it_is_missing_with_one_line(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    path = write_manifest(workdir, edited(export={"targets": "auto"}))
    result = CliRunner().invoke(main, ["plan", "-m", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages_planned = [line.split()[0] for line in result.output.splitlines() if not line.startswith("[")]
    assert {"export", "quantize"} <= set(stages_planned) and not {"openvino", "openvino_int8"} & set(stages_planned)
    lines = [line for line in result.output.splitlines() if line.startswith("[targets ]")]
    assert len(lines) == 1
    assert "openvino: OpenVINO is not installed: pip install 'cskd-pipeline[openvino]'" in lines[0]
    assert "openvino-int8: OpenVINO is not installed" in lines[0]
