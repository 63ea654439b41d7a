"""Quantization-aware distillation: the simulated INT8 model computes what the exported QDQ model
says, QAD runs exactly when post-training INT8 misses its budget, every QAD setting is in the QAD
stage's id and no budget is."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cskd.data import load_dataset
from cskd.evaluate import predict_logits
from cskd.models import Preprocessed, create_model
from cskd.quant import ActQuant, float_model, set_activations, simulate
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from exports.quantize import (
    Int8Settings,
    activation_params,
    add_outputs,
    preprocess,
    quantize_int8,
    runtime_agreement,
)
from foundation.errors import EXIT_GATE_FAILED
from pipeline.cli import main
from tests.conftest import edited, working_dir, write_manifest


def _exported(sim, settings: Int8Settings, calibration: np.ndarray, folder: Path) -> Path:
    fp32 = export_onnx(float_model(sim), sample=torch.zeros(2, 1, 8, 8), path=folder / "fp32.onnx")
    qdq = quantize_int8(preprocess(fp32, folder / "prepared.onnx"), folder / "int8.onnx",
                        calibration_images=calibration, settings=settings)
    set_activations(sim, activation_params(qdq), add_outputs(qdq))
    return qdq


def _network(model: str, digits) -> torch.nn.Module:
    torch.manual_seed(0)
    net = Preprocessed(create_model(model, num_classes=10, in_channels=1), mean=digits.mean, std=digits.std).eval()
    for module in net.modules():  # BatchNorm statistics that are not the identity: folding must be right
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("model,activation,reduce_range,operators", [
    ("resnet8", "uint8", False, "weighted"), ("MobileNetV2", "int8", False, "weighted"),
    ("resnet8", "uint8", True, "weighted"),
    # every operator quantized: residual sums rounded too (uint8: the Relu after them folded in)
    ("resnet8", "uint8", False, "all"), ("resnet8", "int8", False, "all"), ("MobileNetV2", "uint8", False, "all")])
def test_the_simulation_computes_what_the_exported_qdq_model_says(tmp_path, model, activation, reduce_range, operators):
    digits = load_dataset("digits")
    net = _network(model, digits)
    sim = simulate(net, activation_type=activation, reduce_range=reduce_range)
    settings = Int8Settings(activation_type=activation, reduce_range=reduce_range, operators=operators)
    qdq = _exported(sim, settings, digits.train.images[:256].numpy().astype(np.float32) / 255.0, tmp_path)
    quantizers = [q for name, q in sim.named_modules() if isinstance(q, ActQuant) and name not in sim.qad_adds]
    assert all(bool(q.enabled) for q in quantizers)  # every tensor the graph quantizes
    if operators == "all":  # every residual sum rounded (with weighted, only those a Conv reads)
        assert sim.qad_adds and all(bool(sim.get_submodule(name).enabled) for name in sim.qad_adds)
    images = digits.test.images
    simulated = predict_logits(sim, images).numpy()
    graph = run_batched(create_session(qdq, optimize=False), images.numpy())
    floating = predict_logits(net, images).numpy()
    # At most one step of the logits' own quantization apart (float rounding can cross a rounding
    # boundary), far closer than the float model is to the quantized one.
    step = max(p["output"]["scale"] for p in activation_params(qdq).values() if p and p["output"])
    assert np.abs(simulated - graph).max() <= step * 1.001
    assert (simulated.argmax(1) == graph.argmax(1)).mean() >= 0.995
    assert np.abs(floating - graph).max() > 2 * np.abs(simulated - graph).max()
    if reduce_range:  # 7-bit weights: ONNX Runtime's integer kernels compute the graph exactly, on any CPU
        assert runtime_agreement(qdq, images.numpy())["top1_agreement"] == 100.0


@pytest.mark.parametrize("model,matches", [("resnet8", True), ("wrn_16_2", False)])
def test_qad_refuses_a_simulation_that_is_not_the_exported_model(tmp_path, model, matches):
    # With operators: all, a pre-activation WRN's BatchNorm after each residual sum stays an
    # operator of its own, quantized by ONNX Runtime and not by the simulation: QAD must not train it.
    from stagekit.qad_handoff import SimulationMismatch, check_simulation

    digits = load_dataset("digits")
    sim = simulate(_network(model, digits), activation_type="uint8")
    calibration = digits.train.images[:256].numpy().astype(np.float32) / 255.0
    qdq = _exported(sim, Int8Settings(operators="all"), calibration, tmp_path)
    if matches:
        assert check_simulation(sim, qdq, digits.test.images)["top1_agreement"] >= 99.0
    else:
        with pytest.raises(SimulationMismatch, match="operators: weighted"):
            check_simulation(sim, qdq, digits.test.images)


def _latest_quantize(folder: Path) -> Path:
    """The folder of the quantize artifact committed last."""
    paths = list((folder / ".cskd").glob("artifacts/quantize/*/artifact.json"))
    return max(paths, key=lambda p: json.loads(p.read_text())["committed_at"]).parent


def _quantize_metrics(folder: Path) -> dict:
    return json.loads((_latest_quantize(folder) / "artifact.json").read_text())["metrics"]


def _unequalized_student(store: Path, out: Path, k: float = 64.0) -> Path:
    """The tiny run's student with the first channel of each block's first BatchNorm scaled by
    ``k`` and the next convolution's input from that channel by ``1/k``: the same function in
    float (ReLU is positively homogeneous), but per-tensor INT8 scales that one channel
    dominates, so every other channel keeps a few levels. INT8 then loses accuracy, and with
    7-bit weights (``reduce_range``) ONNX Runtime computes the same on every CPU kind: the QAD
    trigger is tested everywhere, not only where quantization happens to hurt the tiny network."""
    from safetensors.torch import load_file, save_file

    (weights,) = (store / "artifacts" / "distill").glob("*/model.safetensors")
    state = load_file(weights)
    for block in ("layer1.0", "layer2.0", "layer3.0"):
        for name in ("bn1.weight", "bn1.bias"):
            state[f"{block}.{name}"][0] *= k
        state[f"{block}.conv2.weight"][:, 0] /= k
    save_file(state, out)
    return out


def _lossy_int8_manifest(folder: Path, **int8) -> Path:
    """The tiny manifest whose student starts from the unequalized weights and keeps them (one
    epoch at a learning rate of 1e-9), quantized with 7-bit weights."""
    init = _unequalized_student(folder / ".cskd", folder / "unequalized.safetensors") \
        if not (folder / "unequalized.safetensors").exists() else folder / "unequalized.safetensors"
    student = {"model": "resnet8", "loss": {"kind": "cskd", "preset": "core"},
               "init": {"path": str(init), "format": "safetensors"},
               "train": {"epochs": 1, "batch_size": 128, "lr": 1e-9, "momentum": 0.0, "weight_decay": 0.0,
                         "augment": {"crop_padding": 1, "flip": False}}}
    int8 = {"activation_type": "int8", "operators": "weighted", "reduce_range": True, **int8}
    return write_manifest(folder, edited(student=student, export={"targets": ["onnx", "onnx-int8"], "int8": int8}))


def _shipped_or_failed_on_the_int8_budget(result) -> None:
    failed = [line for line in result.output.splitlines() if line.startswith("[gate    ]") and "FAIL" in line]
    assert result.exit_code == (EXIT_GATE_FAILED if failed else 0), result.output
    assert all(line.count(" budget: measured") == 1 and "onnx-int8_top1" in line for line in failed)


def test_qad_runs_when_int8_misses_its_budget_and_not_when_it_holds(shipped_run):
    """On a copy of the tiny run's store (teacher cached), a student INT8 hurts on every CPU kind:
    measure the post-training drop, then set the budget just above it (QAD must not run) and just
    below it (QAD must run, and the card says so)."""
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")
    with working_dir(folder):
        def run(**int8):
            path = _lossy_int8_manifest(folder, fallback=False, **int8)
            result = CliRunner().invoke(main, ["run", "-m", str(path), "--quiet"], catch_exceptions=False)
            return result, _quantize_metrics(folder)

        result, measured = run(qad={"when": "never"}, max_drop=100)
        drop = measured["ptq_drop"]
        assert drop >= 2.0, f"the unequalized student lost only {drop:.2f} points in INT8"
        result, held = run(max_drop=round(drop + 0.01, 2), qad={"epochs": 1})
        assert held["qad"] is None and held["ptq_drop"] == pytest.approx(drop)
        # the stage holds the budget on val; the gate judges it again on the test split, which the
        # stage never saw: the run ships, or fails there and only there (the float rounding of the
        # machine and its thread count decide which)
        _shipped_or_failed_on_the_int8_budget(result)
        assert "[qad]" not in result.output and "[qad     ]" not in result.output  # not trained, not even read
        result, missed = run(max_drop=round(max(drop - 0.01, 0.0), 2), qad={"epochs": 1, "lr": 0.0005})
        assert missed["qad"] is not None and missed["ptq_drop"] == pytest.approx(drop), result.output
        assert missed["qad"]["epochs"] == 1 and missed["qad"]["loss"] == "cskd" and missed["qad"]["teacher"] == "teacher"
        assert missed["qad"]["parity"]["graph"]["top1_agreement"] >= 99.0
        assert "quantization-aware distillation" in (folder / ".cskd" / "logs").joinpath(
            sorted(p.name for p in (folder / ".cskd" / "logs").iterdir())[-1]).read_text()
        assert "[qad     ] ran" in result.output
        # A tighter budget reruns the quantize stage, not the training: QAD comes from the store.
        result, tighter = run(max_drop=round(max(drop - 0.5, 0.0), 2), qad={"epochs": 1, "lr": 0.0005})
        assert "[qad     ] cached" in result.output and "[quantize] ran" in result.output, result.output
        assert tighter["qad"]["artifact"] == missed["qad"]["artifact"]


def test_when_qad_still_misses_the_float_fallback_applies_to_the_qad_model(shipped_run):
    """A zero budget that a near-zero QAD learning rate cannot meet (the unequalized student loses
    points in INT8 on every CPU kind): the fallback then keeps nodes of the fine-tuned model in
    float, and the card records both drops and those nodes."""
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")
    with working_dir(folder):
        path = _lossy_int8_manifest(folder, max_drop=0.0, fallback=True, qad={"epochs": 1, "lr": 1e-7})
        result = CliRunner().invoke(main, ["run", "-m", str(path), "--quiet"], catch_exceptions=False)
    card = _quantize_metrics(folder)
    assert card["ptq_drop"] >= 2.0
    # the stage meets the zero budget on val; the gate judges the same budget on the test split,
    # which the fallback never saw: it may fail there, and then only there
    _shipped_or_failed_on_the_int8_budget(result)
    assert card["qad"] is not None and card["qad"]["drop"] > 0  # QAD ran and did not meet the budget alone
    assert card["kept_float"], "the fallback kept no node in float"
    assert card["val_drop"] <= 0.0 and card["val_drop"] < card["qad"]["drop"]
    fallback = json.loads((_latest_quantize(folder) / "fallback.json").read_text())
    assert fallback["attempts"][0]["kept_float"] == [] and fallback["kept_float"] == card["kept_float"]


@pytest.mark.slow  # a student trained for one epoch, and the fallback's sweep over its layers: a minute each
@pytest.mark.parametrize("student,operators,why", [
    ("wrn_16_2", "all", "operators: weighted"),  # simulated, but not what the QDQ model computes
    ("vgg8", "weighted", "torch.fx"),  # no simulation at all: vgg's layer loop cannot be traced
])
def test_a_simulation_that_is_not_the_exported_model_skips_qad_and_the_fallback_follows(shipped_run, student,
                                                                                         operators, why):
    """QAD must not train a simulation that is not the QDQ model (operators: all on a pre-activation
    WRN), nor stop the run when there is none (vgg): the stage says so in one line, records why,
    and the fallback holds the budget."""
    source, _, code, _ = shipped_run
    assert code == 0
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(source / ".cskd", folder / ".cskd")  # the teacher is cached
    with working_dir(folder):
        int8 = {"operators": operators, "max_drop": 0.0, "fallback": True, "qad": {"when": "always", "epochs": 1}}
        text = edited(student__model=student, student__train__epochs=1,
                      export={"targets": ["onnx", "onnx-int8"], "int8": int8})
        # up to the quantize stage: the gate's test-split budget of 0 is not what this test is about
        result = CliRunner().invoke(main, ["export", "-m", str(write_manifest(folder, text)), "--target", "onnx-int8"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = _quantize_metrics(folder)
    assert card["operators"] == operators and card["qad"] is None
    assert why in card["qad_skipped"]
    assert "[qad] warning: skipped" in result.output and "Traceback" not in result.output
    assert card["val_drop"] <= 0.0  # the fallback, on the calibrated model, held the budget


def test_every_qad_setting_is_in_the_qad_stage_id_and_no_budget_is(workdir):
    from exports.cpu import machine_class
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    def ids(**int8) -> tuple[str | None, str]:
        text = edited(export={"targets": ["onnx", "onnx-int8"], "int8": int8})
        planned = {p.kind: p.id for p in plan(load_manifest(write_manifest(workdir, text)))}
        return planned.get("qad"), planned["quantize"]

    base = ids()
    trains_otherwise = [ids(qad={"epochs": 3}), ids(qad={"lr": 0.01}), ids(qad={"loss": "kd"}),
                        ids(qad={"loss": "dist"}), ids(qad={"teacher": "fp32-student"}),
                        ids(calibration_images=256), ids(calibration="entropy"), ids(activation_type="int8"),
                        ids(per_channel=False), ids(reduce_range=machine_class() == "vnni"),  # not the default here
                        ids(operators="all")]
    qad_ids = [base[0], *(qad for qad, _ in trains_otherwise)]
    assert None not in qad_ids and len(set(qad_ids)) == len(qad_ids)
    always, never, budget = ids(qad={"when": "always"}), ids(qad={"when": "never"}), ids(max_drop=0.25)
    quantize_ids = [base[1], *(q for _, q in trains_otherwise), always[1], never[1], budget[1]]
    assert len(set(quantize_ids)) == len(quantize_ids)  # the quantize stage reads all of them
    assert always[0] == base[0]  # when QAD runs is not what it computes
    assert never[0] is None  # no QAD stage in the plan
    assert budget[0] == base[0]  # editing the budget retrains nothing
    assert ids(operators="weighted")[0] == base[0]  # QAD trains weighted under auto
    assert ids(qad={"loss": "cskd-core"})[0] == base[0]  # the tiny student's own loss: what inherit means
    assert base == ids(qad={"when": "on_drop", "epochs": 2, "lr": 0.001, "loss": "inherit", "teacher": "teacher"})
