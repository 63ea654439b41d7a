"""The content-addressed store: chained ids, atomic commit, digests, concurrency."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline.core.errors import StoreError
from pipeline.core.store import ArtifactStore, artifact_id
from pipeline.manifest_io import manifest_from_text
from pipeline.orchestrator import plan
from tests.conftest import TINY_MANIFEST, edited


def test_ids_are_sha256_of_the_recipe_and_chain():
    a = artifact_id("distill", 1, {"lr": 0.1}, {"teacher": "t1"})
    assert len(a) == 64 and a == artifact_id("distill", 1, {"lr": 0.1}, {"teacher": "t1"})
    assert a != artifact_id("distill", 2, {"lr": 0.1}, {"teacher": "t1"})  # version
    assert a != artifact_id("distill", 1, {"lr": 0.2}, {"teacher": "t1"})  # config
    assert a != artifact_id("distill", 1, {"lr": 0.1}, {"teacher": "t2"})  # lineage


def test_changing_student_changes_distill_and_downstream_not_teacher():
    base = {p.kind: p.id for p in plan(manifest_from_text(TINY_MANIFEST))}
    changed = {p.kind: p.id for p in plan(manifest_from_text(edited(student__train__epochs=3)))}
    assert changed["teacher"] == base["teacher"]
    for kind in ("distill", "export", "validate", "gate", "ship"):
        assert changed[kind] != base[kind], kind


def test_commit_is_atomic_and_verify_detects_tampering(tmp_path):
    store = ArtifactStore(tmp_path)
    tmp = store.new_tmp_dir("x", "a" * 64)
    (tmp / "weights.bin").write_bytes(b"1234")
    assert not store.has("x", "a" * 64)  # nothing visible before the rename
    art = store.commit(tmp, kind="x", art_id="a" * 64, record={"metrics": {"m": 1}})
    assert not tmp.exists() and store.has("x", "a" * 64)
    seal = json.loads((art.path / "seal.json").read_text())["files"]
    assert set(seal) == {"weights.bin", "artifact.json"} and store.problems("x", "a" * 64) == []
    (art.path / "weights.bin").write_bytes(b"12")  # truncated
    assert "sha256 mismatch" in store.problems("x", "a" * 64)[0]
    os.remove(art.path / "weights.bin")
    assert "missing" in store.problems("x", "a" * 64)[0]


def test_second_commit_of_the_same_id_keeps_the_first(tmp_path):
    store = ArtifactStore(tmp_path)
    first, second = store.new_tmp_dir("x", "b" * 64), store.new_tmp_dir("x", "b" * 64)
    (first / "f").write_text("first")
    (second / "f").write_text("second")
    store.commit(first, kind="x", art_id="b" * 64, record={})
    art = store.commit(second, kind="x", art_id="b" * 64, record={})
    assert (art.path / "f").read_text() == "first" and not second.exists()
    assert json.loads((art.path / "artifact.json").read_text())["id"] == "b" * 64


def test_clean_tmp_removes_folders_of_dead_processes_only(tmp_path):
    store = ArtifactStore(tmp_path)
    mine = store.new_tmp_dir("x", "c" * 64)
    dead = tmp_path / "tmp" / f"x-{'c' * 16}-999999999-deadbeef"
    dead.mkdir()
    foreign = tmp_path / "tmp" / "mywork"  # not a name the store makes: never removed
    foreign.mkdir()
    assert store.clean_tmp() == 1
    assert mine.exists() and not dead.exists() and foreign.exists()


def _committed(tmp_path, kind="x", art_id="d" * 64):
    store = ArtifactStore(tmp_path)
    tmp = store.new_tmp_dir(kind, art_id)
    (tmp / "w.bin").write_bytes(b"weights")
    return store, store.commit(tmp, kind=kind, art_id=art_id, record={"metrics": {"top1": 90.0}})


def _reseal(path, **changes):
    seal = json.loads((path / "seal.json").read_text())
    seal.update(changes)
    (path / "seal.json").write_text(json.dumps(seal))


def test_a_seal_of_another_kind_or_id_does_not_verify(tmp_path):
    store, art = _committed(tmp_path)
    _reseal(art.path, kind="y")
    assert "sealed as y/" in store.problems("x", "d" * 64)[0] and not store.has("x", "d" * 64)
    _reseal(art.path, kind="x", id="e" * 64)
    assert f"sealed as x/{'e' * 64}" in store.problems("x", "d" * 64)[0]


def test_a_seal_that_leaves_out_the_record_does_not_verify(tmp_path):
    store, art = _committed(tmp_path)
    seal = json.loads((art.path / "seal.json").read_text())
    del seal["files"]["artifact.json"]
    (art.path / "seal.json").write_text(json.dumps(seal))
    problems = store.problems("x", "d" * 64)
    assert any("record not sealed" in p for p in problems) and not store.has("x", "d" * 64)


def test_a_record_copied_from_another_artifact_does_not_verify(tmp_path):
    import hashlib

    store, art = _committed(tmp_path)
    record = json.loads((art.path / "artifact.json").read_text())
    (art.path / "artifact.json").write_text(json.dumps({**record, "id": "f" * 64}))
    seal = json.loads((art.path / "seal.json").read_text())
    seal["files"]["artifact.json"] = hashlib.sha256((art.path / "artifact.json").read_bytes()).hexdigest()
    (art.path / "seal.json").write_text(json.dumps(seal))  # resealed: only the record's own id is wrong
    assert store.problems("x", "d" * 64) == [f"{art.path / 'artifact.json'}: record does not belong to x/{'d' * 64}"]


def test_an_extra_file_or_a_bad_seal_does_not_verify_and_has_means_verified(tmp_path):
    store, art = _committed(tmp_path)
    assert store.has("x", "d" * 64) and store.get("x", "d" * 64).metrics == {"top1": 90.0}
    (art.path / "extra.txt").write_text("planted")
    assert store.exists("x", "d" * 64) and not store.has("x", "d" * 64)  # there, but not trusted
    assert "extra file, not in the seal" in store.problems("x", "d" * 64)[0]
    with pytest.raises(StoreError, match="extra file"):
        store.get("x", "d" * 64)
    (art.path / "extra.txt").unlink()
    (art.path / "seal.json").write_text("[1, 2]")
    assert store.problems("x", "d" * 64) == [f"{art.path / 'seal.json'}: missing or invalid seal"]
    assert not store.has("x", "e" * 64) and not store.exists("x", "e" * 64)


def test_a_symlinked_artifact_folder_or_file_does_not_verify(tmp_path):
    store, art = _committed(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(art.path, elsewhere)
    shutil.rmtree(art.path)
    art.path.symlink_to(elsewhere)  # a complete, well-sealed folder, reached through a link
    assert store.exists("x", "d" * 64) and store.problems("x", "d" * 64) == [f"{art.path}: not a folder"]
    art.path.unlink()
    shutil.copytree(elsewhere, art.path)
    (art.path / "w.bin").unlink()
    (art.path / "w.bin").symlink_to(elsewhere / "w.bin")  # same bytes, through a link
    assert "is a symlink" in store.problems("x", "d" * 64)[0]


def test_clean_tmp_keeps_a_live_runs_folder_and_a_recent_dead_one_when_asked(tmp_path):
    import subprocess
    import sys
    import time

    store = ArtifactStore(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / "tmp" / f"x-{'c' * 16}-{child.pid}-deadbeef"  # another live process's run
        live.mkdir(parents=True)
        dead = tmp_path / "tmp" / f"x-{'c' * 16}-999999999-deadbeef"
        dead.mkdir()
        assert store.clean_tmp(older_than_s=3600) == 0 and dead.exists()  # too recent to be sure
        old = time.time() - 7200
        os.utime(dead, (old, old))
        assert store.clean_tmp(older_than_s=3600) == 1 and not dead.exists() and live.exists()
    finally:
        child.kill()
        child.wait()
    assert store.clean_tmp() == 1 and not live.exists()  # its process is gone now


def test_the_run_index_merges_a_runs_end_into_its_start_and_names_a_bad_line(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.runs() == []
    store.record_run({"run": "r1", "started": 1.0, "manifest": "a", "ids": {}})
    store.record_run({"run": "r2", "started": 0.5, "manifest": "b", "ids": {}})
    store.record_run({"run": "r1", "status": "passed"})
    runs = store.runs()
    assert [r["run"] for r in runs] == ["r2", "r1"] and runs[1]["status"] == "passed"
    assert runs[0]["status"] == "running"
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write("not json\n")
    with pytest.raises(StoreError, match=r"runs\.jsonl:4: not a run index line"):
        store.runs()
