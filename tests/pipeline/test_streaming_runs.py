"""``data.in_memory``: a run that streams its image folder ships; the resolved choice is part
of the ids of the stages that read data, and the number of decoding workers is not."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeline.cli import main
from stagekit.data_section import DataSection
from tests.conftest import edited, write_manifest
from tests.pipeline.test_fingerprint import RETRAINED, TRAIN_READERS, _to_run, _write_folder


def test_in_memory_auto_streams_exactly_when_the_decoded_training_split_exceeds_the_limit(tmp_path):
    _write_folder(tmp_path / "images")  # 72 training images
    section = {"name": "imagefolder", "root": str(tmp_path / "images"), "memory_limit_mib": 1, "grayscale": True}
    assert DataSection(**section, image_size=64).source().storage is None  # 72 x 64 x 64: 0.3 MiB
    assert DataSection(**section, image_size=128).source().storage == "stream"  # 1.1 MiB
    assert DataSection(**section, image_size=128, max_train_samples=60).source().storage is None  # 0.9 MiB
    assert DataSection(**section, image_size=128, in_memory=True).source().storage is None
    assert DataSection(**section, image_size=8, in_memory=False, workers=3).source().workers == 3


def test_whether_a_folder_streams_is_in_the_ids_and_the_number_of_workers_is_not(workdir):
    """(A streamed run to the end: the shards test below, whose data always streams.)"""
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    _write_folder(workdir / "images")

    def ids(**data) -> dict[str, str]:
        section = {"name": "imagefolder", "root": "images", "image_size": 8, "grayscale": True, **data}
        return {p.kind: p.id for p in plan(load_manifest(write_manifest(workdir, edited(data=section))))}

    streamed = ids(in_memory=False, workers=0)
    assert ids(in_memory=False, workers=2) == streamed  # two decoding workers read the same images
    memory = ids(in_memory=True)  # read differently from 64 px up: every stage that reads the data reruns
    assert {k for k in streamed if streamed[k] != memory[k]} == TRAIN_READERS
    assert ids() == memory  # auto: 72 images of 8 x 8 fit in memory


def test_a_plan_lists_the_training_folder_once_to_decide_in_memory_auto(workdir, monkeypatch):
    """Every stage reading data resolves the same view; the folder (which may hold millions of
    files) is listed for the decision once per plan, not once per stage."""
    import cskd.data.imagefolder as imagefolder
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    _write_folder(workdir / "images")
    listed = []
    measure = imagefolder.decoded_train_bytes
    counted = lambda *args: listed.append(args) or measure(*args)  # noqa: E731 - counts cached calls too
    counted.cache_clear = measure.cache_clear
    monkeypatch.setattr(imagefolder, "decoded_train_bytes", counted)
    section = {"name": "imagefolder", "root": "images", "image_size": 8, "grayscale": True}
    steps = plan(load_manifest(write_manifest(workdir, edited(data=section))))
    assert len([s for s in steps if hasattr(s.config, "data")]) >= 4 and len(listed) == 1


def test_an_image_folder_sharded_by_the_shard_command_runs_to_the_end(workdir):
    """`cskd-pipeline shard` writes tar shards that read exactly as the folder does; a run on them
    ships, and a changed shard reruns the stages that read the training data."""
    import os

    import torch

    from cskd.data.imagefolder import load_imagefolder
    from cskd.data.shards import load_shards

    _write_folder(workdir / "images")
    result = CliRunner().invoke(main, ["shard", "--root", "images", "--out", "shards", "--shard-size", "30"])
    assert result.exit_code == 0, result.output
    assert "train_shards: shards/train-{000000..000002}.tar" in result.output  # 72 images, 30 a shard
    shards = load_shards("shards/train-{000000..000002}.tar", "shards/test-000000.tar", grayscale=True)
    folder = load_imagefolder(workdir / "images", grayscale=True, stream=True)
    assert shards.class_names == folder.class_names and torch.equal(shards.train.labels, folder.train.labels)
    assert torch.equal(torch.cat(list(shards.train.batches(32))), torch.cat(list(folder.train.batches(32))))

    again = CliRunner().invoke(main, ["shard", "--root", "images", "--out", "shards"])
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "not empty" in again.output
    assert sorted(p.name for p in (workdir / "shards").iterdir())[0] == "classes.json"  # nothing deleted

    def train():
        return {"epochs": 1, "batch_size": 16, "lr": 0.05, "augment": {"crop_padding": 1, "flip": False}}

    data = {"name": "webdataset", "train_shards": "shards/train-{000000..000002}.tar",
            "test_shards": "shards/test-000000.tar", "grayscale": True, "image_size": 8, "val_fraction": 0.125,
            "workers": 0}
    manifest = write_manifest(workdir, edited(data=data, teacher__train=train(), student__train=train()))
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    validate = json.loads(next((workdir / ".cskd").glob("artifacts/validate/*/artifact.json")).read_text())["metrics"]
    assert validate["samples"] == 24
    os.utime(workdir / "shards" / "train-000001.tar", (1, 1))
    assert _to_run(workdir, manifest) == RETRAINED
