"""The content-addressed store: chained ids, atomic commit, digests, concurrency."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from foundation.artifact import artifact_id
from foundation.errors import OutputError, StoreError
from foundation.store import ArtifactStore
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


def test_ids_of_existing_stores_do_not_change():
    # a recipe's id is part of every store on disk: this value must never move
    assert artifact_id("distill", 1, {"lr": 0.1}, {"teacher": "t1"}) == \
        "335271a276a4b9a84c95c7ac44c2d8e3c0766b2101c0561e2439680aba9c7847"


def test_a_temp_folder_the_store_makes_is_one_its_cleaner_recognises(tmp_path):
    from foundation.store import _TMP_NAME

    store = ArtifactStore(tmp_path)
    made = store.new_tmp_dir("quantize", "0123456789abcdef" * 4)
    match = _TMP_NAME.match(made.name)
    assert match and int(match.group(1)) == os.getpid()
    assert store.clean_tmp() == 0  # ours, alive


def test_clean_tmp_counts_every_dead_folder_and_skips_foreign_names(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.clean_tmp() == 0  # no tmp folder yet
    for name in ("aaa", "mmm", "zzz", "notes.txt"):
        (tmp_path / "tmp").mkdir(exist_ok=True)
        (tmp_path / "tmp" / name).mkdir()
    dead = [tmp_path / "tmp" / f"x-{c * 16}-99999999{i}-deadbeef" for i, c in enumerate("abc")]
    for folder in dead:
        folder.mkdir()
    (tmp_path / "tmp" / f"x-{'d' * 16}-999999990-cafebabe").symlink_to(tmp_path / "aaa-target")
    assert store.clean_tmp() == 3 and not any(p.exists() for p in dead)
    assert {p.name for p in (tmp_path / "tmp").iterdir()} == {"aaa", "mmm", "notes.txt", "zzz",
                                                              f"x-{'d' * 16}-999999990-cafebabe"}  # a link: left


def test_claim_takes_an_empty_or_new_folder_or_an_old_store_and_refuses_a_users(tmp_path):
    ArtifactStore(tmp_path / "new" / "deep" / ".cskd").claim()
    assert (tmp_path / "new" / "deep" / ".cskd" / ".cskd-store").read_text() == "cskd-pipeline artifact store\n"
    ArtifactStore(tmp_path / "new" / "deep" / ".cskd").claim()  # again: fine
    (tmp_path / "empty").mkdir()
    ArtifactStore(tmp_path / "empty").claim()
    old = tmp_path / "old"
    (old / "artifacts").mkdir(parents=True)
    (old / "tmp").mkdir()
    (old / "runs.jsonl").write_text("")
    ArtifactStore(old).claim()  # made before the marker: store folders only
    user = tmp_path / "user"
    user.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (user / name).write_text("mine")
    with pytest.raises(OutputError, match=r"already holds files the pipeline did not make \(a\.txt, b\.txt, c\.txt\);"):
        ArtifactStore(user).claim()
    assert not (user / ".cskd-store").exists()
    mixed = tmp_path / "mixed"
    (mixed / "artifacts").mkdir(parents=True)
    (mixed / "thesis.tex").write_text("mine")
    with pytest.raises(OutputError, match=r"\(thesis\.tex\)"):
        ArtifactStore(mixed).claim()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        ArtifactStore(tmp_path / "file").claim()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OutputError, match="is not a folder"):
        ArtifactStore(tmp_path / "link").claim()


def test_get_names_the_first_problem_and_how_many_more(tmp_path):
    store, art = _committed(tmp_path)
    assert (store.get("x", "d" * 64).kind, store.get("x", "d" * 64).id) == ("x", "d" * 64)
    (art.path / "w.bin").write_bytes(b"edited")
    with pytest.raises(StoreError) as one:
        store.get("x", "d" * 64)
    assert str(one.value) == f"{art.path / 'w.bin'}: sha256 mismatch (edited or truncated)"
    (art.path / "e1").write_text("1")
    (art.path / "e2").write_text("2")
    with pytest.raises(StoreError, match=r"extra file, not in the seal \(and 2 more\)$"):
        store.get("x", "d" * 64)


def test_commit_refuses_links_quarantines_a_broken_artifact_and_drops_its_scratch(tmp_path):
    store = ArtifactStore(tmp_path)
    tmp = store.new_tmp_dir("x", "a" * 64)
    (tmp / "real").write_text("r")
    (tmp / "link").symlink_to(tmp / "real")
    with pytest.raises(StoreError, match=r"^x wrote symlinks \(link\); artifacts hold plain files only$"):
        store.commit(tmp, kind="x", art_id="a" * 64, record={})
    broken = store.artifact_dir("x", "b" * 64)
    broken.mkdir(parents=True)
    (broken / "half").write_text("half-written by a killed run")
    store.work_dir("x", "b" * 64).mkdir(parents=True)
    tmp = store.new_tmp_dir("x", "b" * 64)
    (tmp / "f").write_text("whole")
    art = store.commit(tmp, kind="x", art_id="b" * 64, record={"metrics": {"m": 2}})
    assert (art.kind, art.id, art.metrics) == ("x", "b" * 64, {"m": 2}) and art.record["kind"] == "x"
    assert store.has("x", "b" * 64) and not store.work_dir("x", "b" * 64).exists()
    [quarantined] = (tmp_path / "quarantine").iterdir()
    assert quarantined.name.startswith(f"x-{'b' * 64}-") and (quarantined / "half").exists()


def test_layout_runs_order_two_problems_two_links_and_two_quarantines(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    store.claim()
    assert store.work_dir("x", "a" * 64) == tmp_path / "s" / "work" / f"x-{'a' * 64}"
    store.record_run({"run": "late", "started": 5.0, "manifest": "m", "ids": {}})
    store.record_run({"run": "early", "started": 1.0, "manifest": "m", "ids": {}})
    assert [r["run"] for r in store.runs()] == ["early", "late"]  # by start time, not by line
    tmp = store.new_tmp_dir("x", "a" * 64)
    (tmp / "f").write_text("1")
    (tmp / "l1").symlink_to(tmp / "f")
    (tmp / "l2").symlink_to(tmp / "f")
    with pytest.raises(StoreError, match=r"wrote symlinks \(l1, l2\)|wrote symlinks \(l2, l1\)"):
        store.commit(tmp, kind="x", art_id="a" * 64, record={})
    store, art = _committed(tmp_path / "t")
    (art.path / "w.bin").write_bytes(b"edited")
    (art.path / "extra").write_text("1")
    with pytest.raises(StoreError) as two:
        store.get("x", "d" * 64)
    assert str(two.value).endswith("(and 1 more)") and "extra" in str(two.value).split(" (and")[0]
    first = store.quarantine("x", "d" * 64)
    store2, _ = _committed(tmp_path / "t")
    second = store2.quarantine("x", "d" * 64)
    assert first.parent == second.parent == tmp_path / "t" / "quarantine" and first != second


def test_claim_refuses_a_folder_of_store_names_without_artifacts_or_marker(tmp_path):
    (tmp_path / "tmp").mkdir()
    with pytest.raises(OutputError, match=r"\(tmp\)"):
        ArtifactStore(tmp_path).claim()
