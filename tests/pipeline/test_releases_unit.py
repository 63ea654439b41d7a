"""The seal and the release trail on hand-made version folders (no training): fast enough for
`make mutants` to run against every mutant of ``foundation/bundle_seal.py`` and
``pipeline/releases.py``. The pipeline-level tests are in test_integrity.py and test_release.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from foundation.bundle_seal import SUMS, read_sums, seal_bundle, verify_bundle
from foundation.errors import ManifestError, OutputError, StoreError
from foundation.files import sha256_file
from pipeline.releases import (
    RELEASES,
    planned_version,
    promote,
    publish_version,
    release_history,
    repair_releases,
    rollback,
    ship_reason,
)


def _fill(model: bytes, top1: float = 90.0):
    """A ``fill`` for publish_version: a model, its card listing it, a README."""
    def fill(folder: Path) -> None:
        (folder / "student.onnx").write_bytes(model)
        card = {"files": {"student.onnx": sha256_file(folder / "student.onnx")}, "metrics": {"onnx_top1": top1}}
        (folder / "model_card.json").write_text(json.dumps(card))
        (folder / "README.md").write_text("a bundle\n")
    return fill


def _ship(folder: Path, model: bytes, top1: float = 90.0) -> tuple[Path, bool]:
    key = sha256_file_bytes(model)
    why = ship_reason(folder, planned_version(folder, key).name, rules=["r1", "r2"], skipped=[], top1=top1) \
        if folder.is_dir() else "first"
    return publish_version(folder, key, _fill(model, top1), marker={"what": "shipped bundle"}, run="run-1",
                           gate={"passed": True}, why=why)


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _latest(folder: Path) -> str:
    return os.readlink(folder / "latest")


# ---- the seal -------------------------------------------------------------------------
def test_a_sealed_folder_lists_every_file_and_verifies(tmp_path):
    folder, _ = _ship(tmp_path / "tiny", b"model one")
    sums = read_sums(folder)
    assert sorted(sums) == sorted(p.name for p in folder.iterdir() if p.name != SUMS)
    assert ".cskd-output.json" in sums and "model_card.json" in sums  # the marker and the card are sealed too
    assert all(sums[name] == sha256_file(folder / name) for name in sums)
    assert verify_bundle(folder) == sums and verify_bundle(tmp_path / "tiny" / "latest") == sums
    lines = (folder / SUMS).read_text().splitlines()
    assert lines == sorted(lines, key=lambda line: line[66:]) and all(line[64:66] == "  " for line in lines)


@pytest.mark.parametrize("change, says", [
    (lambda f: (f / "README.md").write_text("changed\n"), "README.md: changed since it shipped"),
    (lambda f: (f / "model_card.json").unlink(), "model_card.json: missing from the bundle"),
    (lambda f: (f / "numpy.py").write_text(""), "numpy.py: an unlisted file"),
    (lambda f: (f / "sub").mkdir(), "sub: an unlisted folder"),
    (lambda f: (f / SUMS).unlink(), "SHA256SUMS: missing"),
    (lambda f: (f / SUMS).write_text("nonsense\n"), "SHA256SUMS:1: not a '<sha256>  <file name>' line"),
    (lambda f: (f / SUMS).write_text((f / SUMS).read_text() + (f / SUMS).read_text().splitlines()[0] + "\n"),
     "a name listed twice"),
    (lambda f: (f / SUMS).write_text("0" * 64 + "  ../escape\n"), "SHA256SUMS:1:"),
    (lambda f: (f / SUMS).write_text("".join(line + "\n" for line in (f / SUMS).read_text().splitlines()
                                             if "model_card" not in line)), "model_card.json: an unlisted file"),
])
def test_every_change_is_named(tmp_path, change, says):
    folder, _ = _ship(tmp_path / "tiny", b"model one")
    change(folder)
    with pytest.raises(StoreError, match=None) as failed:
        verify_bundle(folder)
    assert says in str(failed.value) and failed.value.exit_code == 4


def test_the_card_and_the_seal_must_agree_and_a_card_must_be_listed(tmp_path):
    folder, _ = _ship(tmp_path / "tiny", b"model one")
    card = json.loads((folder / "model_card.json").read_text())
    card["files"]["student.onnx"] = "0" * 64  # the card lies, then the seal is redone over the lie
    (folder / "model_card.json").write_text(json.dumps(card))
    seal_bundle(folder)
    with pytest.raises(StoreError, match="student.onnx: the model card and SHA256SUMS disagree"):
        verify_bundle(folder)
    (folder / "model_card.json").write_text(json.dumps({"no files": True}))
    seal_bundle(folder)
    with pytest.raises(StoreError, match="model_card.json: no 'files' list"):
        verify_bundle(folder)
    (folder / "model_card.json").unlink()
    seal_bundle(folder)
    with pytest.raises(StoreError, match="does not list model_card.json"):
        verify_bundle(folder)
    with pytest.raises(StoreError, match="no such bundle folder"):
        verify_bundle(tmp_path / "nowhere")
    (folder / "link").symlink_to(folder / "README.md")
    with pytest.raises(StoreError, match="plain files with plain names only"):
        seal_bundle(folder)


# ---- the trail ------------------------------------------------------------------------
def test_versions_the_trail_and_what_each_record_says(tmp_path):
    folder = tmp_path / "tiny"
    v1, moved = _ship(folder, b"model one", 90.0)
    assert (v1.name, moved, _latest(folder)) == ("v1", True, "v1")
    v2, moved = _ship(folder, b"model two", 80.0)
    assert (v2.name, moved, _latest(folder)) == ("v2", True, "v2")
    again, moved = _ship(folder, b"model one", 90.0)  # the same models: their version, not a new one
    assert (again.name, moved, _latest(folder)) == ("v1", True, "v1")
    moves = release_history(folder)
    assert [(m["action"], m["from"], m["to"]) for m in moves] == [("ship", None, "v1"), ("ship", "v1", "v2"),
                                                                 ("ship", "v2", "v1")]
    assert moves[1]["why"] == ("the gate passed: 2 rules ran; replaced v1 (ONNX top-1 90.00) with v2 "
                               "(ONNX top-1 80.00)")
    assert all(m["run"] == "run-1" and m["gate"] == {"passed": True} and m["time"] for m in moves)
    skipped = ship_reason(folder, "v3", rules=["r1"], skipped=["champion rule skipped (ship.promote: always)"],
                          top1=None)
    assert skipped == ("the gate passed: 1 rules ran; champion rule skipped (ship.promote: always); "
                       "replaced v1 (ONNX top-1 90.00) with v3")
    assert ship_reason(folder, "v1", rules=[], skipped=[], top1=1.0).endswith("v1 was already latest")
    (folder / "v1" / "README.md").write_text("edited")  # latest fails its seal: its figure is not quoted
    assert ship_reason(folder, "v3", rules=[], skipped=[], top1=None).endswith(
        "replaced v1 (unverified: README.md changed since it shipped) with v3")


def test_a_next_version_is_one_past_the_highest_even_after_one_is_gone(tmp_path):
    folder = tmp_path / "tiny"
    for model in (b"a", b"b", b"c"):
        _ship(folder, model)
    import shutil

    shutil.rmtree(folder / "v2")  # a version removed by hand: v3 must not be chosen again
    assert planned_version(folder, sha256_file_bytes(b"d")).name == "v4"
    assert planned_version(folder, sha256_file_bytes(b"c")).name == "v3"


def test_promote_and_rollback_move_latest_and_verify_first(tmp_path):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    _ship(folder, b"b")
    assert promote(folder, "1") == ("v2", "v1", True) and _latest(folder) == "v1"
    assert promote(folder, "v1") == ("v1", "v1", False)
    assert rollback(folder) == ("v1", "v2") and _latest(folder) == "v2"
    assert rollback(folder) == ("v2", "v1")
    with pytest.raises(ManifestError, match="nothing to roll back to"):
        rollback(folder)
    (folder / "v2" / "student.onnx").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="v2/student.onnx: changed since it shipped"):
        promote(folder, "v2")
    assert _latest(folder) == "v1" and [m["to"] for m in release_history(folder)][-1] == "v1"
    with pytest.raises(ManifestError, match="no such shipped version"):
        promote(folder, "v9")
    with pytest.raises(ManifestError, match="nothing was shipped under this name"):
        promote(tmp_path / "other", "v1")
    with pytest.raises(ManifestError, match="nothing was shipped under this name"):
        rollback(tmp_path / "other")
    assert not (tmp_path / "other").exists()
    (tmp_path / "theirs").mkdir()
    with pytest.raises(OutputError):
        promote(tmp_path / "theirs", "v1")  # a folder the pipeline did not make


@pytest.mark.parametrize("damage, says", [
    ('{"action": "ship", "to": "v1"', "not a JSON line"),
    ('{"action": "ship", "to": "v1"}', "a last line with no newline"),  # whole JSON, torn before its newline
    ("{}\n", "no known action"),
    ("[1]\n", "not a JSON object"),
    ('{"action": "ship"}\n', "no version it moved latest to"),
    ('{"action": "ship", "to": "v1/../x"}\n', "no version it moved latest to"),
    ('{"action": "delete", "to": "v1"}\n', "no known action"),
])
def test_a_damaged_trail_stops_moves_and_repair_sets_lines_aside(tmp_path, damage, says):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    _ship(folder, b"b")
    trail = folder / RELEASES
    whole = trail.read_text()
    trail.write_text(whole + damage)
    for move in (lambda: promote(folder, "v1"), lambda: rollback(folder), lambda: _ship(folder, b"c")):
        with pytest.raises(ManifestError, match=rf"releases\.jsonl:3: {says}") as failed:
            move()
        assert failed.value.exit_code == 2 and "releases repair" in str(failed.value)
    assert _latest(folder) == "v2" and not (folder / "v3").exists()
    damaged, aside = repair_releases(folder)
    assert damaged == [3] and aside.read_text() == damage.rstrip("\n") + "\n"
    moves = release_history(folder)
    assert [m["action"] for m in moves] == ["ship", "ship", "repair"] and moves[-1]["to"] == "v2"
    assert "line 3" in moves[-1]["why"] and aside.name in moves[-1]["why"]
    assert repair_releases(folder) == ([], None)  # nothing left to repair
    assert rollback(folder) == ("v2", "v1")  # a repair is not a move on the stack


def test_the_trail_is_appended_whole_and_synced(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    writes = []
    real_write = os.write

    def counting(fd, data):
        writes.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    _ship(folder, b"b")
    assert len(writes) == 1 and writes[0].endswith(b"\n") and json.loads(writes[0])["to"] == "v2"


def test_a_repair_keeps_every_whole_line_word_for_word_and_says_what_it_did(tmp_path):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    _ship(folder, b"b")
    trail = folder / RELEASES
    whole = trail.read_text().splitlines()
    trail.write_text(f"{whole[0]}\n[1]\n{whole[1]}\n{{}}")  # a foreign line between two moves, a torn last one
    damaged, aside = repair_releases(folder)
    assert damaged == [2, 4] and aside.parent == folder
    assert aside.name.startswith("releases.damaged-") and aside.name.endswith(".jsonl")
    assert aside.read_text() == "[1]\n{}\n"
    lines = trail.read_text().splitlines()
    assert lines[:2] == whole and len(lines) == 3 and trail.read_text().endswith("\n")
    repair = json.loads(lines[2])
    assert (repair["action"], repair["from"], repair["to"]) == ("repair", "v2", "v2")
    assert repair["why"] == f"set aside 2 damaged line(s) (line 2, line 4) to {aside.name}"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".releases")) == []  # no temporary left
    assert repair_releases(tmp_path / "nothing-shipped") == ([], None)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / RELEASES).write_text("[1]\n")
    with pytest.raises(OutputError):
        repair_releases(tmp_path / "theirs")  # a folder the pipeline did not make is never rewritten
    assert (tmp_path / "theirs" / RELEASES).read_text() == "[1]\n"


def test_the_trail_records_the_time_and_the_default_reasons_and_reads_what_old_versions_wrote(tmp_path):
    folder = tmp_path / "tiny"
    assert ship_reason(folder, "v1", rules=["r"], skipped=[], top1=90.0) == (
        "the gate passed: 1 rules ran; v1 (ONNX top-1 90.00) is the first version of this name")
    _ship(folder, b"a")
    _ship(folder, b"b")
    promote(folder, "v1")
    rollback(folder)
    moves = release_history(folder)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["time"]) for m in moves)
    assert [m["why"] for m in moves[2:]] == ["promoted by hand", "rolled back by hand"]
    # a version an older release marked with its ship artifact (no bundle_key) is still found by it
    (folder / "v2" / ".cskd-output.json").write_text(json.dumps({"made_by": "cskd-pipeline", "ship_artifact": "k2"}))
    assert planned_version(folder, "k2").name == "v2" and planned_version(folder, "k9").name == "v3"
    card = json.loads((folder / "v1" / "model_card.json").read_text())
    del card["metrics"]
    (folder / "v1" / "model_card.json").write_text(json.dumps(card))
    seal_bundle(folder / "v1")
    promote(folder, "v1")
    assert ship_reason(folder, "v3", rules=[], skipped=[], top1=None).endswith(
        "replaced v1 (no ONNX top-1 in its card) with v3")


def test_only_marked_real_version_folders_can_become_latest(tmp_path):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    (folder / "v5").symlink_to(folder / "v1")
    (folder / "v6").mkdir()  # no marker: not made by the pipeline
    for version in ("v5", "v6", "x1"):  # only the real, marked versions are named
        with pytest.raises(ManifestError) as failed:
            promote(folder, version)
        assert str(failed.value).endswith("no such shipped version (versions: v1)")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".cskd-output.json").write_text(json.dumps({"made_by": "cskd-pipeline"}))
    with pytest.raises(ManifestError, match=r"no such shipped version \(versions: none\)"):
        promote(empty, "v1")
    (tmp_path / "theirs").mkdir()
    with pytest.raises(OutputError, match="ship.dir"):
        promote(tmp_path / "theirs", "v1")


def test_rollback_reads_an_unusual_trail_without_crashing(tmp_path):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    _ship(folder, b"b")
    trail = folder / RELEASES
    lines = trail.read_text().splitlines()
    stray = json.dumps({"action": "rollback", "to": "v1"})  # a rollback before any ship: nothing to take off
    repair = json.dumps({"action": "repair", "from": "v1", "to": "v1", "why": "x"})  # moves nothing
    trail.write_text("\n".join([stray, lines[0], lines[1], repair]) + "\n")
    assert rollback(folder) == ("v2", "v1")


def test_bytes_that_are_not_text_are_a_damaged_line_not_a_crash(tmp_path):
    folder = tmp_path / "tiny"
    _ship(folder, b"a")
    trail = folder / RELEASES
    trail.write_bytes(trail.read_bytes() + b"\xff\xfe garbage\n")
    with pytest.raises(ManifestError, match=r"releases\.jsonl:2: not a JSON line"):
        release_history(folder)
    damaged, aside = repair_releases(folder)
    assert damaged == [2] and re.fullmatch(r"releases\.damaged-\d{8}T\d{6}Z-[0-9a-f]{6}\.jsonl", aside.name)
    assert len(release_history(folder)) == 2


def test_the_damage_messages_name_the_known_actions():
    from pipeline.releases import _damage

    assert _damage('{"action": "x", "to": "v1"}') == "no known action (ship, promote, rollback, repair)"
    assert _damage('{"action": "ship", "to": "v1"}') is None


def test_the_seal_names_files_as_given_in_order_and_with_the_fix(tmp_path, monkeypatch):
    folder, _ = _ship(tmp_path / "tiny", b"model one")
    fix = "restore it, or `cskd-pipeline promote` a version that `cskd-pipeline bundle verify` accepts"
    (folder / "b.py").write_text("")
    (folder / "a.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as failed:
        verify_bundle(Path("tiny") / "latest")
    assert str(failed.value) == f"tiny/v1/a.py: an unlisted file in the bundle (SHA256SUMS does not name it): " \
                                f"remove it, or {fix}"  # relative as given, the first by name
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match=rf"^{re.escape(str(folder.resolve()))}/a.py: "):  # outside: the whole path
        verify_bundle(folder)
    (folder / "a.py").unlink()
    (folder / "b.py").unlink()
    (folder / SUMS).write_bytes(b"\xff\xfe\n")
    with pytest.raises(StoreError, match=r"SHA256SUMS: unreadable \("):
        verify_bundle(folder)
    (folder / SUMS).unlink()
    (folder / "odd name.txt").write_text("")
    with pytest.raises(StoreError, match="odd name.txt: a bundle holds plain files with plain names only"):
        seal_bundle(folder)
