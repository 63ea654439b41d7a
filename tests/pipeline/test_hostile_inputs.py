"""The red team's third round: output paths that are links or files, broken run histories, a
missing Slurm, and data paths that do not exist. Each gets one line and its exit code, and
nothing is written where it should not be."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from tests.conftest import edited, write_manifest


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line(result, code: int, *says: str) -> None:
    assert result.exit_code == code, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    for text in says:
        assert text in result.output, result.output


def _image_folder(root) -> None:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 40 * i + 100 * (c == "b"), np.uint8)).save(root / split / c / f"{i}.png")


# ---- shard --out ------------------------------------------------------------------------
@pytest.mark.parametrize("link", ["to a folder", "dangling"])
def test_shard_refuses_a_symlink_at_out_before_writing_anything(workdir, link):
    _image_folder(workdir / "images")
    target = workdir / "elsewhere"
    if link == "to a folder":
        target.mkdir()
    os.symlink(target, workdir / "shards")
    result = _invoke("shard", "--root", "images", "--out", "shards")
    _one_line(result, 2, "shards: is a symbolic link")
    assert not (workdir / "shards.partial").exists() and not target.exists() or not any(target.iterdir())


def test_shard_refuses_out_under_a_regular_file(workdir):
    _image_folder(workdir / "images")
    (workdir / "file").write_text("mine")
    _one_line(_invoke("shard", "--root", "images", "--out", "file/shards"), 2, "file: is not a folder")
    assert (workdir / "file").read_text() == "mine"


# ---- init -------------------------------------------------------------------------------
def test_init_refuses_a_dangling_manifest_symlink_and_writes_nothing_at_its_target(workdir):
    (workdir / "project").mkdir()
    os.symlink(workdir / "outside.yaml", workdir / "project" / "manifest.yaml")
    _one_line(_invoke("init", "project"), 2, "manifest.yaml: is a symbolic link")
    assert not (workdir / "outside.yaml").exists()


@pytest.mark.parametrize("case", ["dangling folder link", "a regular file", "under a regular file"])
def test_init_refuses_a_destination_that_is_not_a_folder(workdir, case):
    (workdir / "file").write_text("mine")
    if case == "dangling folder link":
        os.symlink(workdir / "gone", workdir / "project")
        directory, says = "project", "project: is a symbolic link"
    elif case == "a regular file":
        directory, says = "file", "file: is a file, not a folder"
    else:
        directory, says = "file/x", "file: is a file, not a folder"
    _one_line(_invoke("init", directory), 2, says)
    assert (workdir / "file").read_text() == "mine" and not (workdir / "gone").exists()


def test_init_writes_a_new_manifest_and_never_overwrites(workdir):
    assert _invoke("init", "project").exit_code == 0
    assert (workdir / "project" / "manifest.yaml").is_file()
    _one_line(_invoke("init", "project"), 2, "already exists")


# ---- runs and diff on a damaged history --------------------------------------------------
def _report(folder, run_id: str, body: str | None = None) -> None:
    path = folder / "reports" / "tiny" / "runs" / run_id / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(body if body is not None else json.dumps({
        "metrics": {"teacher_top1": 90.0, "student_top1": 88.0}, "gate": {"passed": True},
        "manifest": {"name": "tiny", "student": {"train": {"epochs": int(run_id[-1])}}}, "run": {"id": run_id}}))


@pytest.mark.parametrize("damage", ["{}", "{not json", '{"metrics": {}, "gate": {"passed": true}}'])
def test_runs_skips_an_unreadable_report_with_one_warning_and_diff_names_it(workdir, damage):
    _report(workdir, "20261130T000001Z-aaaaa1")
    _report(workdir, "20261130T000002Z-bbbbb2")
    _report(workdir, "20261130T000003Z-ccccc3", damage)
    result = CliRunner().invoke(main, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "20261130T000003Z-ccccc3/report.json" in warnings[0]
    rows = json.loads(result.output[result.output.index("["):])
    assert [r["run"] for r in rows] == ["20261130T000001Z-aaaaa1", "20261130T000002Z-bbbbb2"]
    assert _invoke("diff", "20261130T000001Z", "20261130T000002Z").exit_code == 0  # the readable ones still compare
    _one_line(_invoke("diff", "20261130T000001Z", "20261130T000003Z"), 2, "20261130T000003Z-ccccc3/report.json")


def test_run_ids_made_within_one_second_sort_in_the_order_they_were_made():
    import re
    import time

    from pipeline.history import new_run_id

    ids = []
    for _ in range(6):  # a run that recomputes nothing takes well under a second
        ids.append(new_run_id())
        time.sleep(0.003)
    assert sorted(ids) == ids, ids  # `runs` lists, and `diff` and the champion rule read, in this order
    assert all(re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}", run) for run in ids), ids


# ---- a missing Slurm --------------------------------------------------------------------
def test_study_with_slurm_launcher_and_no_slurm_is_exit_3_before_anything_trains(workdir, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(workdir))  # no sbatch, no srun
    write_manifest(workdir)
    result = _invoke("study", "-m", "tiny.yaml", "--losses", "kd,ce", "--seeds", "1", "--launcher", "slurm")
    _one_line(result, 3, "needs Slurm", "sbatch")
    assert not (workdir / ".cskd" / "artifacts").exists()  # the teacher was not trained


# ---- data paths that do not exist -------------------------------------------------------
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize("case", ["no root", "no train", "no test", "no shard", "no init file"])
def test_a_missing_data_path_is_exit_2_naming_it_and_leaves_no_store(workdir, command, case):
    changes: dict = {"data": {"name": "imagefolder", "root": "images", "image_size": 8, "grayscale": True}}
    if case != "no root":
        _image_folder(workdir / "images")
    if case == "no train":
        os.rename(workdir / "images" / "train", workdir / "images" / "training")
        says = ["data.root", "images/train not found"]
    elif case == "no test":
        os.rename(workdir / "images" / "test", workdir / "images" / "testing")
        says = ["data.root", "images/test (or val) not found"]
    elif case == "no shard":
        changes["data"] = {"name": "webdataset", "train_shards": "shards/train-{000000..000001}.tar",
                           "test_shards": "shards/test-000000.tar"}
        says = ["data.train_shards", "shards/train-000000.tar not found"]
    elif case == "no init file":
        changes["student__init"] = {"path": "weights/resnet8.safetensors"}
        says = ["student.init.path", "weights/resnet8.safetensors not found"]
    else:
        says = ["data.root", "images not found", "image folder"]
    write_manifest(workdir, edited(**changes), "m.yaml")
    result = _invoke(command, "-m", "m.yaml")
    _one_line(result, 2, *says)
    assert "download" not in result.output  # that fix does not apply to an image folder or shards
    assert not (workdir / ".cskd").exists()
