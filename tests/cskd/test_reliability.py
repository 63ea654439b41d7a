"""Signals stop training at a step boundary with a checkpoint; resuming is bit-exact.
Unsafe or mismatched weights files are refused."""

from __future__ import annotations

import json
import os
import pickle
import signal

import pytest
import torch

from cskd.checkpoint import load_weights, save_weights, sha256_file
from cskd.config import TrainConfig
from cskd.data import load_dataset, split_train_val
from cskd.engine import Interrupted, train
from cskd.errors import CheckpointError
from cskd.models import Preprocessed, create_model
from cskd.objectives import CSKDCore

CFG = TrainConfig(epochs=2, batch_size=128, lr=0.05, schedule="cosine", augment={"crop_padding": 1, "flip": False})


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("digits")
    return ds, *split_train_val(ds.train, val_fraction=0.1, seed=0)


def _model(ds, seed=0):
    torch.manual_seed(seed)
    return Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=ds.mean, std=ds.std)


class SignalAt(CSKDCore):
    """Sends ``signum`` to this process during forward number ``at`` (a deterministic 'kill point')."""

    def __init__(self, *args, at: int, signum: int, **kw):
        super().__init__(*args, **kw)
        self.calls, self.at, self.signum = 0, at, signum

    def forward(self, *args, **kw):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(*args, **kw)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    ds, tr, va = data
    folder = tmp_path_factory.mktemp("straight")
    teacher = _model(ds, seed=1)
    straight = _model(ds)
    train(CSKDCore(straight, teacher), tr, va, CFG, work_dir=folder / "w", metrics_path=folder / "a.jsonl",
          progress=False)
    return teacher, straight, folder / "a.jsonl"


@pytest.mark.parametrize(("signum", "at"), [(signal.SIGTERM, 3), (signal.SIGINT, 14), (signal.SIGTERM, 10)])
def test_signal_checkpoints_at_a_step_and_resume_is_bit_exact(data, uninterrupted, tmp_path, signum, at):
    ds, tr, va = data  # 10 steps per epoch: kill points mid-epoch 1, mid-epoch 2, end of epoch 1
    teacher, straight, reference_metrics = uninterrupted
    victim = _model(ds)
    # what was there before (SIG_IGN where the suite runs in a background job, whose shell ignores SIGINT)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        train(SignalAt(victim, teacher, at=at, signum=signum), tr, va, CFG, work_dir=tmp_path / "b",
              metrics_path=tmp_path / "b.jsonl", progress=False)
    assert info.value.signum == signum and (tmp_path / "b" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "b.jsonl").exists()  # no final metrics from an unfinished run
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # handlers restored
    resumed = _model(ds, seed=7)
    last = train(CSKDCore(resumed, teacher), tr, va, CFG, work_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl",
                 progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    reference = [json.loads(x) for x in reference_metrics.read_text().splitlines()]
    assert [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()] == reference  # same history
    assert last["epoch"] == 2


def test_pickled_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "teacher.pt"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    with pytest.raises(CheckpointError, match="pickled .pt/.pth files are refused"):
        load_weights(create_model("resnet8", num_classes=10, in_channels=1), path)
    assert not marker.exists()


def test_sha256_and_shape_mismatches_name_the_problem(tmp_path):
    model = create_model("resnet8", num_classes=10, in_channels=1)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    with pytest.raises(CheckpointError, match="sha256 is"):
        load_weights(model, path, expected_sha256="0" * 64)
    load_weights(create_model("resnet8", num_classes=10, in_channels=1), path, expected_sha256=sha256_file(path))
    with pytest.raises(CheckpointError, match=r"layer 'fc.weight' has shape \(10, 64\), the model expects \(100, 64\)"):
        load_weights(create_model("resnet8", num_classes=100, in_channels=1), path)
    with pytest.raises(CheckpointError, match="missing from the file"):
        load_weights(create_model("resnet20", num_classes=10, in_channels=1), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(model, path)
