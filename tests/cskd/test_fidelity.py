"""The recipe details a method comparison depends on: the authors' full training split
and last partial batch, mdistiller's DKD beta per pair, and paired cells that see the
same batches whatever their loss."""

from __future__ import annotations

import torch

from cskd.config import TrainConfig
from cskd.data import DeviceLoader, split_train_val
from cskd.data.datasets import Split
from cskd.loss_registry import parse_loss


def _split(n=10):
    return Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous(), torch.arange(n))


def test_val_fraction_zero_trains_on_the_whole_split():
    train, val = split_train_val(_split(50), val_fraction=0.0, seed=0)
    assert len(train) == 50 and len(val) == 0
    train, val = split_train_val(_split(50), val_fraction=0.1, seed=0)
    assert (len(train), len(val)) == (45, 5)


def test_drop_last_false_keeps_the_last_partial_batch():
    assert TrainConfig(epochs=1).drop_last is True  # the default stays as before
    kept = DeviceLoader(_split(10), batch_size=4, drop_last=False, seed=0)
    dropped = DeviceLoader(_split(10), batch_size=4, drop_last=True, seed=0)
    assert [len(y) for _, y, _ in kept] == [4, 4, 2]
    assert [len(y) for _, y, _ in dropped] == [4, 4]


def test_dkd_beta_follows_mdistillers_pairs_unless_set():
    dkd = parse_loss({"kind": "dkd"})
    assert dkd.for_pair("resnet56", "resnet20").beta == 2.0
    assert dkd.for_pair("resnet110", "resnet32").beta == 2.0
    assert dkd.for_pair("wrn_40_2", "wrn_16_2").beta == 6.0
    assert dkd.for_pair("vgg13", "vgg8").beta == 6.0
    assert dkd.for_pair("vgg13", "MobileNetV2").beta == 6.0  # mdistiller's vgg13_mv2.yaml
    assert dkd.for_pair("resnet32x4", "resnet8x4").beta == 8.0
    assert parse_loss({"kind": "dkd", "beta": 3.0}).for_pair("resnet56", "resnet20").beta == 3.0


def test_a_strong_view_does_not_change_the_order_or_the_weak_view():
    """Cells of a study paired by seed: CS-KD paper (weak + strong views) and KD (weak only)
    must see the same batches in the same order with the same weak augmentation."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40))
    common = dict(batch_size=8, crop_padding=2, flip=True, seed=3)
    plain, with_strong = DeviceLoader(split, **common), DeviceLoader(split, **common, strong=True)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        with_strong.set_epoch(epoch)
        for (w1, y1, s1), (w2, y2, s2) in zip(plain, with_strong, strict=True):
            assert s1 is None and s2 is not None
            assert torch.equal(y1, y2) and torch.equal(w1, w2)


def test_the_paper_manifest_trains_on_every_image_and_keeps_the_last_batch():
    from pipeline.manifest_io import load_manifest
    from tests.conftest import REPO

    m = load_manifest(REPO / "manifests" / "resnet8x4.yaml")
    assert m.data.val_fraction == 0  # the authors' 50,000, not 45,000
    assert m.teacher.train.drop_last is False and m.student.train.drop_last is False
