"""The content-addressed store: chained ids, atomic commit, digests, concurrency."""

from __future__ import annotations

import json
import os

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
