"""Trust: a tamper corpus against the sealed store, and output folders that never destroy
a user's files. Each case: ``verify`` reports it (exit 4), the next ``run`` ships nothing
refused or stale and repairs the store, and ``verify`` is clean again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import edited, working_dir, write_manifest

PASS = edited(name="tiny")
# Same graph up to the gate; the gate refuses on an impossible latency budget.
REFUSED = edited(name="refused", latency={"batch_sizes": [1], "runs": 100, "warmup": 1},
                 gate__latency={"backend": "onnx", "batch": 1, "max_p90_ms": 1e-6})
PASS_WITH_LATENCY = edited(name="tiny", latency={"batch_sizes": [1], "runs": 100, "warmup": 1})


def _cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A working folder with the passing and the refused manifest both run once."""
    folder = tmp_path_factory.mktemp("pristine")
    with working_dir(folder):
        write_manifest(folder, PASS_WITH_LATENCY, "pass.yaml")
        write_manifest(folder, REFUSED, "refused.yaml")
        assert _cli("run", "-m", "pass.yaml", "--quiet")[0] == 0
        code, out = _cli("run", "-m", "refused.yaml", "--quiet")
        assert code == 1 and "p90 latency" in out
        card = json.loads((folder / "shipped" / "tiny" / "latest" / "model_card.json").read_text())
        yield folder, card


def _artifact(kind: str, manifest: str = "pass.yaml") -> Path:
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    art_id = next(p.id for p in plan(load_manifest(manifest)) if p.kind == kind)
    return Path(".cskd") / "artifacts" / kind / art_id


def _edit_record(kind: str, change, manifest: str = "pass.yaml") -> None:
    path = _artifact(kind, manifest) / "artifact.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _forge_verdict():
    _edit_record("gate", lambda r: (r["metrics"].update(passed=True), [x.update(passed=True)
                                                                      for x in r["metrics"]["rules"]]), "refused.yaml")


def _symlink_onnx():
    target = _artifact("export") / "model.onnx"
    copy = Path("elsewhere.onnx")
    shutil.copyfile(target, copy)  # same bytes: only the link itself gives it away
    target.unlink()
    target.symlink_to(copy.resolve())


def _half_commit():  # a folder at the artifact's place with no seal and no record
    folder = _artifact("ship")
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "student.onnx").write_bytes(b"partial")


def _plant():  # a made-up artifact at a planned id: records and files that were never sealed
    folder = _artifact("validate")
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "artifact.json").write_text(json.dumps({"kind": "validate", "metrics": {"student_top1": 100.0}}))


CORPUS = {
    "edit a verdict": (_forge_verdict, "refused.yaml"),
    "edit a metric": (lambda: _edit_record("validate", lambda r: r["metrics"].update(student_top1=100.0)), None),
    "edit a latency": (lambda: _edit_record("latency", lambda r: r["metrics"]["results"][0].update(p90_ms=0.0)),
                       None),
    "delete a record": (lambda: (_artifact("gate") / "artifact.json").unlink(), None),
    "corrupt a record": (lambda: (_artifact("distill") / "artifact.json").write_text("{not json"), None),
    "add a record": (lambda: (_artifact("export") / "artifact.old.json").write_text("{}"), None),
    "add a file": (lambda: (_artifact("validate") / "notes.txt").write_text("hello"), None),
    "delete the seal": (lambda: (_artifact("teacher") / "seal.json").unlink(), None),
    "replace a file with a symlink": (_symlink_onnx, None),
    "truncate weights": (lambda: (_artifact("distill") / "model.safetensors").write_bytes(b"\x00" * 16), None),
    "half-committed artifact": (_half_commit, None),
    "planted artifact": (_plant, None),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_tamper_corpus(pristine, tmp_path, monkeypatch, case):
    folder, card = pristine
    work = tmp_path / "work"
    shutil.copytree(folder, work, symlinks=True)
    monkeypatch.chdir(work)
    tamper, refused_manifest = CORPUS[case]
    tamper()
    code, out = _cli("verify", "-m", "pass.yaml")
    assert code == 4 and "problem(s)" in out, out
    if refused_manifest:  # the forged verdict is recomputed: the refused model still does not ship
        code, out = _cli("run", "-m", refused_manifest, "--quiet")
        assert code == 1 and "failed verification" in out and not (work / "shipped" / "refused").exists(), out
    code, out = _cli("run", "-m", "pass.yaml", "--quiet")
    assert code == 0, out
    shipped = json.loads((work / "shipped" / "tiny" / "latest" / "model_card.json").read_text())
    # Nothing stale: the shipped numbers and files are the honest ones of the pristine run.
    assert shipped["metrics"]["student_top1"] == card["metrics"]["student_top1"]
    assert shipped["files"] == card["files"] and shipped["artifacts"] == card["artifacts"]
    assert _cli("verify", "-m", "pass.yaml")[0] == 0
    assert any((work / ".cskd" / "quarantine").iterdir())  # the broken artifact was kept for inspection


def test_leftover_temp_folder_of_a_dead_run_is_cleaned(pristine, tmp_path, monkeypatch):
    folder, _ = pristine
    work = tmp_path / "work"
    shutil.copytree(folder, work, symlinks=True)
    monkeypatch.chdir(work)
    art = _artifact("gate")
    leftover = work / ".cskd" / "tmp" / f"gate-{art.name[:16]}-999999999-0badf00d"
    leftover.mkdir(parents=True)
    (leftover / "verdict.json").write_text('{"passed": true}')
    assert _cli("run", "-m", "pass.yaml", "--quiet")[0] == 0
    assert not leftover.exists()


# ---- output folders ----------------------------------------------------------------------------
def test_a_report_folder_the_pipeline_did_not_make_is_refused_and_kept(workdir):
    (workdir / "important").mkdir()
    (workdir / "important" / "thesis.tex").write_text("years of work")
    write_manifest(workdir, edited(name="important", report={"dir": "."}), "m.yaml")
    code, out = _cli("run", "-m", "m.yaml", "--quiet")
    assert code == 2 and "important exists and was not made by cskd-pipeline" in out, out
    assert (workdir / "important" / "thesis.tex").read_text() == "years of work"
    assert not (workdir / ".cskd" / "artifacts").exists()  # refused before any compute


@pytest.mark.parametrize(("change", "says"), [
    ({"report": {"dir": ".cskd"}, "name": "artifacts"}, "overlap"),
    ({"store": "."}, "working directory"),
    ({"store": "shipped/tiny"}, "overlap"),
    ({"ship": {"dir": "cskd"}}, "project folder"),
])
def test_overlapping_output_locations_are_refused(workdir, change, says):
    write_manifest(workdir, edited(**change), "m.yaml")
    code, out = _cli("validate", "-m", "m.yaml")
    assert code == 2 and says in out and out.count("\n") == 1, out


def test_a_store_folder_holding_user_files_is_refused(workdir):
    (workdir / "mywork" / "tmp").mkdir(parents=True)
    (workdir / "mywork" / "tmp" / "draft.txt").write_text("keep me")
    write_manifest(workdir, edited(store="mywork"), "m.yaml")
    code, out = _cli("run", "-m", "m.yaml", "--quiet")
    assert code == 2 and "did not make" in out, out
    assert (workdir / "mywork" / "tmp" / "draft.txt").read_text() == "keep me"


def test_a_ship_folder_symlinked_out_of_the_working_directory_is_refused(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (workdir / "shipped").symlink_to(outside, target_is_directory=True)
    write_manifest(workdir, edited(), "m.yaml")
    code, out = _cli("run", "-m", "m.yaml", "--quiet")
    assert code == 2 and "outside" in out and "ship.dir" in out, out
    assert not any(outside.iterdir())


def test_output_folders_of_the_version_before_markers_are_adopted_not_refused(tiny_trained, workdir):
    # Upgrading: reports/<name>/ and shipped/<name>/ as the previous version wrote them (no marker).
    (workdir / "reports" / "tiny").mkdir(parents=True)
    (workdir / "reports" / "tiny" / "report.json").write_text("{}")
    (workdir / "shipped" / "tiny").mkdir(parents=True)
    for name in ("student.onnx", "model_card.json"):
        (workdir / "shipped" / "tiny" / name).write_text("old")
    write_manifest(workdir, edited(), "m.yaml")
    code, out = _cli("run", "-m", "m.yaml", "--quiet")
    assert code == 0, out
    assert (workdir / "shipped" / "tiny" / "student.onnx").read_text() == "old"  # kept, beside v1/
    assert (workdir / "shipped" / "tiny" / "latest" / "student.onnx").is_file()
    # A file the old version never wrote makes it someone else's folder again.
    (workdir / "reports" / "other").mkdir()
    (workdir / "reports" / "other" / "notes.txt").write_text("mine")
    write_manifest(workdir, edited(name="other"), "o.yaml")
    assert _cli("run", "-m", "o.yaml", "--quiet")[0] == 2
