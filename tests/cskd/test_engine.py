"""The training engine: learning, metrics lines, exact resume, NaN detection, schedules."""

from __future__ import annotations

import json

import pytest
import torch

from cskd.config import TrainConfig
from cskd.data import load_dataset, split_train_val
from cskd.engine import train
from cskd.errors import NumericalError
from cskd.models import Preprocessed, create_model
from cskd.objectives import CrossEntropy, CSKDCore


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    tr, va = split_train_val(ds.train, val_fraction=0.1, seed=0)
    return ds, tr, va


def _model(ds, seed=0):
    torch.manual_seed(seed)
    return Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=ds.mean, std=ds.std)


CFG = TrainConfig(epochs=3, batch_size=128, lr=0.05, schedule="cosine", augment={"crop_padding": 1, "flip": False})


def test_training_learns_and_writes_one_metrics_line_per_epoch(digits, tmp_path):
    ds, tr, va = digits
    model = _model(ds)
    last = train(CrossEntropy(model), tr, va, CFG, work_dir=tmp_path / "w", metrics_path=tmp_path / "m.jsonl",
                 progress=False)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert lines[-1] == last and {"ce", "loss", "val_top1", "lr"} <= set(last)
    assert last["val_top1"] > 50  # 3 epochs on digits: far above the 10% of chance
    assert lines[0]["ce"] > lines[-1]["ce"]


def test_resume_reaches_the_same_weights_bit_for_bit(digits, tmp_path):
    ds, tr, va = digits
    teacher = _model(ds, seed=1)
    straight = _model(ds)
    train(CSKDCore(straight, teacher), tr, va, CFG, work_dir=tmp_path / "a", metrics_path=tmp_path / "a.jsonl",
          progress=False)
    # Interrupted run: one epoch, then a fresh process-like restart from the checkpoint.
    part = _model(ds)
    short = CFG.model_copy(update={"epochs": 1})
    train(CSKDCore(part, teacher), tr, va, short, work_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl",
          progress=False)
    resumed = _model(ds, seed=99)  # different init: everything must come from the checkpoint
    train(CSKDCore(resumed, teacher), tr, va, CFG, work_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl",
          progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 3


def test_nan_loss_names_epoch_step_and_term(digits, tmp_path):
    ds, tr, va = digits
    model = _model(ds)
    with torch.no_grad():
        model.net.fc.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"epoch 1, step 1 \(terms: .*ce"):
        train(CrossEntropy(model), tr, va, CFG, work_dir=tmp_path / "w", metrics_path=tmp_path / "m.jsonl",
              progress=False)


def test_schedules():
    step = TrainConfig(epochs=240, lr=0.05, milestones=[150, 180, 210])
    assert step.lr_at(0) == 0.05 and step.lr_at(150) == pytest.approx(0.005) and step.lr_at(239) == pytest.approx(5e-5)
    cosine = TrainConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=2)
    assert cosine.lr_at(0) == pytest.approx(0.05) and cosine.lr_at(2) == pytest.approx(0.1)
    assert cosine.lr_at(9) < 0.01
    with pytest.raises(ValueError):
        TrainConfig(epochs=10, milestones=[5, 3])


def test_diverged_weights_stop_with_the_tensor_named_while_the_loss_is_finite(digits, tmp_path):
    # The red team's quickstart teacher (lr 10, momentum 0.99) kept a finite loss (1e10 and more)
    # while a BatchNorm running variance overflowed; without this check the run went on to a
    # chance-level teacher and shipped a student. Where that run overflows depends on the CPU's
    # float kernels (epoch 3 on AVX2, epoch 6 on Intel AVX-512, not within 15 epochs on an AMD
    # EPYC), so the overflow is made certain here: inputs scaled to about 1e20 overflow the first
    # BatchNorm's variance (about 1e40 > float32's 3.4e38) at the first step, while the layer's
    # output, and so the loss, stays finite (each value divided by an infinite deviation is 0).
    ds, _, _ = digits
    tr, va = split_train_val(ds.train, val_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=ds.mean, std=[1e-20])
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="cosine", augment={"crop_padding": 1, "flip": False})
    # The engine names the loss first when it is non-finite at any step of the epoch, so this
    # message is also the proof that the loss stayed finite: the weights' check alone caught it.
    with pytest.raises(NumericalError, match=r"^net\.bn1\.running_var became non-finite at epoch 1, step 1; "):
        train(CrossEntropy(model), tr, va, cfg, work_dir=tmp_path / "w", metrics_path=tmp_path / "m.jsonl",
              progress=False)
