"""The recipe details a method comparison depends on: the authors' full training split
and last partial batch, mdistiller's DKD beta per pair, and paired cells that see the
same batches whatever their loss."""

from __future__ import annotations

import pytest
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


def test_the_paper_protocol_records_the_best_test_epoch_labelled_and_the_gate_ignores_it(shipped_run, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import edited, working_dir, write_manifest

    shutil.copytree(shipped_run[0] / ".cskd", tmp_path / ".cskd")  # the teacher is cached
    with working_dir(tmp_path):
        text = edited(student__train__epochs=3, validate={"paper_protocol": True}, ship={"dir": "shipped",
                                                                                          "promote": "always"})
        result = CliRunner().invoke(main, ["run", "-m", str(write_manifest(tmp_path, text)), "-q"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(selected on the test set)" in result.output
    report = json.loads((tmp_path / "reports/tiny/latest/report.json").read_text())
    protocol = report["paper_protocol"]
    rows = report["training"]["student"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("monitor_top1" in r for r in rows)
    assert protocol["best_test_top1"] == max(r["monitor_top1"] for r in rows)
    assert protocol["last_test_top1"] == rows[-1]["monitor_top1"]
    # the last epoch's test top-1 is the final student's, as validation measures it
    assert abs(protocol["last_test_top1"] - report["metrics"]["student_top1"]) < 1e-9
    assert "test set" in protocol["selected_on"] and "gate" in protocol["selected_on"]
    assert not any("paper" in r["rule"] or "monitor" in r["rule"] for r in report["gate"]["rules"])
    html = (tmp_path / "reports/tiny/latest/report.html").read_text()
    assert "selected on the test set" in html


def test_the_paper_protocol_left_unset_changes_no_id(tmp_path):
    from pipeline.manifest_io import manifest_from_text
    from pipeline.orchestrator import plan
    from tests.conftest import TINY_MANIFEST, edited, working_dir

    with working_dir(tmp_path):
        base = {p.kind: p.id for p in plan(manifest_from_text(TINY_MANIFEST))}
        off = {p.kind: p.id for p in plan(manifest_from_text(edited(validate={"paper_protocol": None})))}
        on = {p.kind: p.id for p in plan(manifest_from_text(edited(validate={"paper_protocol": True})))}
    assert off == base and on["distill"] != base["distill"] and on["teacher"] == base["teacher"]


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (37, 1, 28, 28)])
def test_the_gathered_strong_view_equals_the_every_op_view_for_the_same_draws(shape):
    """Each op applied once to the samples that drew it gives the tensor the capture-safe path
    (every op on the whole batch, torch.where) gives, draw for draw, over several batches."""
    from cskd.data.augment import strong_view

    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float() / 255.0
    for seed in range(8):
        everywhere = strong_view(x, torch.Generator().manual_seed(seed), padding=4, flip=True, select_all=True)
        gathered = strong_view(x, torch.Generator().manual_seed(seed), padding=4, flip=True, select_all=False)
        assert torch.equal(everywhere, gathered), seed
        x = gathered
