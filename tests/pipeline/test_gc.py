"""gc's keep rules on a store built by hand (artifacts committed through the store, runs in its
index, shipped versions with model cards): what each rule keeps, and that nothing else stays.
tests/pipeline/test_release.py runs gc on real pipeline runs."""

from __future__ import annotations

import json
import os
import time

import pytest

from foundation.bundle_seal import seal_bundle
from foundation.errors import ManifestError, StoreError
from foundation.files import OUTPUT_MARKER
from foundation.store import ArtifactStore
from pipeline.gc import collect, plan_gc


def _commit(store: ArtifactStore, kind: str, char: str) -> str:
    art_id = char * 64
    tmp = store.new_tmp_dir(kind, art_id)
    (tmp / "f").write_text(char)
    store.commit(tmp, kind=kind, art_id=art_id, record={})
    return art_id


def _ship(folder, version: str, artifacts: dict[str, str]) -> None:
    path = folder / version
    path.mkdir(parents=True)
    (path / OUTPUT_MARKER).write_text(json.dumps({"made_by": "cskd-pipeline"}))
    (path / "model_card.json").write_text(json.dumps({"artifacts": artifacts}))


@pytest.fixture
def store(tmp_path):
    store = ArtifactStore(tmp_path / ".cskd")
    store.claim()
    _commit(store, "teacher", "0")  # made before the index's first run: kept
    time.sleep(0.01)
    store.record_run({"run": "r0", "manifest": "other", "ids": {}, "ship_dir": str(tmp_path / "shipped" / "other"),
                      "started": time.time(), "host": "elsewhere", "pid": 1})
    store.record_run({"run": "r0", "status": "passed"})
    time.sleep(0.01)  # everything committed from here on is after the index's first run
    return store


def _run(store, run, manifest, ids, status, ship_dir, started):
    store.record_run({"run": run, "manifest": manifest, "ids": ids, "ship_dir": str(ship_dir), "started": started,
                      "host": "elsewhere", "pid": 1})
    if status != "running":
        store.record_run({"run": run, "status": status})


def test_each_keep_rule_keeps_its_artifacts_and_the_rest_goes(store, tmp_path):
    ship = tmp_path / "shipped" / "a"
    now = time.time()
    ids = {c: _commit(store, "distill", c) for c in "12345"}
    _run(store, "r1", "a", {"distill": ids["1"]}, "passed", ship, now + 1)   # an older passing run
    _run(store, "r2", "a", {"distill": ids["2"]}, "passed", ship, now + 2)   # the latest passing run
    _run(store, "r3", "a", {"distill": ids["3"]}, "failed", ship, now + 3)   # the latest run
    _ship(ship, "v1", {"distill": ids["4"]})                                 # a shipped version's lineage
    plan = plan_gc(store)
    kept = {art_id[0] for _, art_id in plan.keep}
    assert kept == {"0", "2", "3", "4"}
    assert plan.keep[("distill", ids["2"])].startswith("latest passing run of a")
    assert plan.keep[("distill", ids["3"])].startswith("latest run of a")
    assert plan.keep[("distill", ids["4"])] == "shipped a/v1"
    assert plan.keep[("teacher", "0" * 64)] == "made before the run index"
    assert sorted(p.name[0] for p in plan.remove) == ["1", "5"]
    assert {p.name[0] for p in plan_gc(store, drop_failed=True).remove} == {"1", "3", "5"}


def test_collect_removes_the_plan_and_reclaims_its_bytes_and_a_dry_run_removes_nothing(store, tmp_path):
    ship = tmp_path / "shipped" / "a"
    keep, drop = _commit(store, "distill", "a"), _commit(store, "distill", "b")
    _run(store, "r1", "a", {"distill": keep}, "passed", ship, time.time())
    (store.root / "quarantine").mkdir()
    (store.root / "quarantine" / "x-broken").mkdir()
    (store.root / "work" / f"distill-{drop}").mkdir(parents=True)
    (store.root / "work" / f"distill-{keep}").mkdir(parents=True)
    plan = plan_gc(store)
    names = sorted(p.name for p in plan.remove)
    assert names == sorted([drop, "x-broken", f"distill-{drop}"])
    lines = []
    dry = collect(store, plan, really=False, echo=lines.append)
    assert dry > 0 and all(p.exists() for p in plan.remove) and lines[0].startswith("would remove")
    assert collect(store, plan_gc(store), really=True, echo=lines.append) == dry
    assert not store.exists("distill", drop) and store.has("distill", keep)
    assert (store.root / "work" / f"distill-{keep}").exists()


def test_an_artifact_a_live_run_holds_is_skipped_not_removed(store, tmp_path):
    drop = _commit(store, "distill", "c")
    _run(store, "r1", "a", {}, "passed", tmp_path / "shipped" / "a", time.time())
    plan = plan_gc(store)
    assert [p.name for p in plan.remove] == [drop]
    with store.lock("distill", drop):
        lines = []
        assert collect(store, plan, really=True, echo=lines.append) == 0
    assert store.exists("distill", drop) and plan.busy == [store.artifact_dir("distill", drop)]
    assert lines == [f"keeping {store.artifact_dir('distill', drop)} (in use by a running pipeline)"]


def test_a_running_run_on_this_machine_keeps_everything_it_plans(store, tmp_path):
    import socket

    busy = _commit(store, "distill", "d")
    store.record_run({"run": "live", "manifest": "a", "ids": {"distill": busy}, "ship_dir": str(tmp_path / "s"),
                      "started": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    store.record_run({"run": "later", "manifest": "a", "ids": {}, "ship_dir": str(tmp_path / "s"),
                      "started": time.time() + 1, "host": socket.gethostname(), "pid": 999_999_999})
    store.record_run({"run": "later", "status": "passed"})
    plan = plan_gc(store)
    assert plan.keep[("distill", busy)] == "running now (live)"


def test_a_symlink_in_the_store_is_unlinked_never_followed(store, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_text("keep me")
    (store.root / "artifacts" / "distill").mkdir(parents=True, exist_ok=True)
    link = store.root / "artifacts" / "distill" / ("e" * 64)
    link.symlink_to(outside)
    (store.root / "artifacts" / "linked-kind").symlink_to(outside)
    _run(store, "r1", "a", {"distill": "e" * 64}, "passed", tmp_path / "shipped" / "a", time.time())
    plan = plan_gc(store)
    assert link in plan.remove and store.root / "artifacts" / "linked-kind" in plan.remove
    collect(store, plan, really=True, echo=lambda _: None)
    assert not link.is_symlink() and (outside / "data.bin").read_text() == "keep me"


def test_an_unreadable_model_card_stops_gc_before_anything_goes(store, tmp_path):
    ship = tmp_path / "shipped" / "a"
    drop = _commit(store, "distill", "f")
    _run(store, "r1", "a", {}, "passed", ship, time.time())
    _ship(ship, "v1", {})
    (ship / "v1" / "model_card.json").write_text("{truncated")
    with pytest.raises(ManifestError, match=r"v1/model_card\.json: unreadable model card .* gc removed nothing"):
        plan_gc(store)
    assert store.exists("distill", drop)
    (ship / "v1" / "model_card.json").write_text(json.dumps({"artifacts": {"distill": drop}}))
    assert plan_gc(store).keep[("distill", drop)] == "shipped a/v1"
    (ship / "v2").mkdir()  # a version folder the pipeline did not make (no marker): not read
    (ship / "v2" / "model_card.json").write_text("{truncated")
    (ship / "notes").mkdir()
    assert plan_gc(store).keep[("distill", drop)] == "shipped a/v1"
    # a sealed version's card is read only once the bundle verifies: a card edited to name other
    # artifacts (so that gc would take this version's lineage) stops gc, naming the file
    (ship / "v1" / "model_card.json").write_text(json.dumps({"artifacts": {"distill": drop}, "files": {}}))
    seal_bundle(ship / "v1")
    assert plan_gc(store).keep[("distill", drop)] == "shipped a/v1"
    (ship / "v1" / "model_card.json").write_text(json.dumps({"artifacts": {}, "files": {}}))
    with pytest.raises(StoreError, match=r"v1/model_card\.json: changed since it shipped.*gc removed nothing"):
        plan_gc(store)
    assert store.exists("distill", drop)


def test_edges_no_runs_no_start_line_only_failed_runs_and_runs_without_a_start_time(tmp_path):
    store = ArtifactStore(tmp_path / ".cskd")
    assert plan_gc(store).remove == []  # not even an artifacts folder
    store.claim()
    old = _commit(store, "distill", "1")
    assert plan_gc(store).keep == {("distill", old): "made before the run index"}  # no run at all yet
    store.record_run({"run": "ghost", "status": "failed"})  # an end without its start: names nothing
    time.sleep(0.01)
    failed = _commit(store, "distill", "2")
    store.record_run({"run": "r1", "manifest": "a", "ids": {"distill": failed}, "ship_dir": str(tmp_path / "s")})
    store.record_run({"run": "r1", "status": "failed"})  # no "started": its line's time orders it
    plan = plan_gc(store)
    assert plan.keep[("distill", failed)].startswith("latest run of a (r1)")  # only failed runs: the latest stays
    assert plan.keep[("distill", old)] == "made before the run index"


def test_a_finished_run_on_this_machine_is_not_running(store, tmp_path):
    import socket

    mine = _commit(store, "distill", "7")
    store.record_run({"run": "done", "manifest": "a", "ids": {"distill": mine}, "ship_dir": str(tmp_path / "s"),
                      "started": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    store.record_run({"run": "done", "status": "passed"})
    assert plan_gc(store).keep[("distill", mine)] == "latest run of a (done)"  # not "running now"
    store.record_run({"run": "other", "manifest": "b", "ids": {"distill": "8" * 64}, "ship_dir": str(tmp_path / "s"),
                      "started": time.time(), "host": "another-host", "pid": os.getpid()})
    assert ("distill", "8" * 64) not in {k for k, why in plan_gc(store).keep.items() if why.startswith("running")}


def test_a_version_folder_not_made_by_the_pipeline_does_not_hide_the_next_one(store, tmp_path):
    ship = tmp_path / "shipped" / "a"
    kept = _commit(store, "distill", "9")
    (ship / "v1").mkdir(parents=True)  # no marker: not ours, skipped
    _ship(ship, "v2", {"distill": kept})
    _run(store, "r1", "a", {}, "passed", ship, time.time())
    assert plan_gc(store).keep[("distill", kept)] == "shipped a/v2"


def test_collect_counts_every_byte_and_removes_every_entry_whatever_comes_first(store, tmp_path):
    drops = [_commit(store, kind, c) for kind, c in (("a-kind", "a"), ("b-kind", "b"), ("c-kind", "c"))]
    _run(store, "r1", "a", {}, "passed", tmp_path / "shipped" / "a", time.time())
    (store.root / "artifacts" / "0-linked").symlink_to(tmp_path)  # a link first in the listing: skipped over
    (store.root / "quarantine").mkdir()
    (store.root / "quarantine" / "stray.bin").write_bytes(b"x" * 1000)
    (store.root / "superseded").mkdir()
    (store.root / "superseded" / "y-old").mkdir()
    (store.root / "superseded" / "y-old" / "w").write_bytes(b"y" * 500)
    (store.root / "artifacts" / "zz-file").write_text("a stray file is not a kind folder")
    plan = plan_gc(store)
    expected = {store.artifact_dir(k, d) for k, d in zip(("a-kind", "b-kind", "c-kind"), drops, strict=True)}
    assert expected <= set(plan.remove)
    sizes = sum(p.lstat().st_size if p.is_symlink() or p.is_file() else
                sum(f.lstat().st_size for f in p.rglob("*") if f.is_file()) for p in plan.remove)
    lines = []
    reclaimed = collect(store, plan, really=True, echo=lines.append)
    assert reclaimed == sizes and reclaimed >= 1500
    assert lines == [f"removing {p}" for p in plan.remove]
    assert not any(p.exists() or p.is_symlink() for p in plan.remove)
    assert tmp_path.exists() and (store.root / "artifacts" / "zz-file").exists()


def test_a_work_folder_a_live_run_holds_is_kept_as_busy(store, tmp_path):
    art_id = "4" * 64
    work = store.root / "work" / f"distill-{art_id}"
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"c" * 100)
    _run(store, "r1", "a", {}, "passed", tmp_path / "shipped" / "a", time.time())
    plan = plan_gc(store)
    assert plan.remove == [work]
    with store.lock("distill", art_id):
        assert collect(store, plan, really=True, echo=lambda _: None) == 0
    assert work.exists() and plan.busy == [work]
    assert collect(store, plan_gc(store), really=True, echo=lambda _: None) == 100 and not work.exists()
