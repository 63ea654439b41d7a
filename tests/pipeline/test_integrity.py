"""Integrity after the gate: a sealed bundle checked by one path before anything uses it, a release
trail that says what ran and survives a torn write, and export from what shipped. Each works on a
copy of the session's tiny shipped run (its store holds the teacher, so a rerun trains a student
at most)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

# Whole pipeline runs (each trains a student on a copy of the tiny run): `make test-slow`, which CI
# runs. `make test` keeps each protection through the fast unit tests of the same code
# (test_releases_unit.py: the seal, the trail, promote and rollback; test_champion_unit.py: a
# tampered champion; test_codec_unit.py: the server's codec).
pytestmark = pytest.mark.slow


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _latest(folder: Path) -> str:
    return os.readlink(folder / "shipped" / "tiny" / "latest")


def _trail(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "shipped/tiny/releases.jsonl").read_text().splitlines()]


@pytest.fixture
def shipped(shipped_run, tmp_path, monkeypatch) -> Path:
    """A copy of the tiny run (store, reports, v1 shipped and latest), as the working directory."""
    source, _, code, _ = shipped_run
    assert code == 0
    folder = tmp_path / "copy"
    shutil.copytree(source, folder, symlinks=True, ignore=shutil.ignore_patterns("deploy", "mine"))
    for version in (folder / "shipped" / "tiny").glob("v*"):  # other tests may have shipped more lineages
        if version.name != "v1":
            shutil.rmtree(version)
    trail = folder / "shipped/tiny/releases.jsonl"
    trail.write_text(trail.read_text().splitlines()[0] + "\n")
    (folder / "shipped/tiny/latest").unlink()
    (folder / "shipped/tiny/latest").symlink_to("v1")
    monkeypatch.chdir(folder)
    return folder


WORSE = ["-o", "student.train.epochs=1", "-o", "ship.promote=always"]  # a different student, shipped as v2


@pytest.fixture
def two_versions(shipped) -> Path:
    """v1, then a one-epoch student shipped over it with ship.promote: always (v2, latest)."""
    result = _cli("run", "-m", "tiny.yaml", "-q", *WORSE)
    assert result.exit_code == 0, result.output
    assert _latest(shipped) == "v2"
    return shipped


# ---- the seal -------------------------------------------------------------------------
@pytest.mark.parametrize("case, named", [
    ("edited README.md", "README.md: changed since it shipped"),
    ("edited model card", "model_card.json: changed since it shipped"),
    ("edited report", "report.html: changed since it shipped"),
    ("numpy.py beside predict.py", "numpy.py: an unlisted file in the bundle"),
    ("a __pycache__ folder", "__pycache__: an unlisted folder in the bundle"),
    ("a listed file removed", "labels.txt: missing from the bundle"),
    ("a listed file as a link", "student.onnx: missing from the bundle"),
    ("a digest zeroed in SHA256SUMS", "predict.py: changed since it shipped"),
    ("a torn SHA256SUMS", "SHA256SUMS:"),
])
def test_bundle_verify_names_every_change_to_a_bundle(shipped, case, named):
    bundle = shipped / "shipped" / "tiny" / "v1"
    ok = _cli("bundle", "verify", str(bundle))
    files = sorted(p.name for p in bundle.iterdir() if p.name != "SHA256SUMS")
    assert ok.exit_code == 0 and f"{len(files)} files match SHA256SUMS" in ok.output, ok.output
    sums = (bundle / "SHA256SUMS").read_text()
    assert [line.split("  ")[1] for line in sums.splitlines()] == files  # every file, README and card included
    assert {"README.md", "model_card.json", "predict.py", "report.html", ".cskd-output.json"} <= set(files)
    if case == "edited README.md":
        (bundle / "README.md").write_text((bundle / "README.md").read_text().replace("a", "b"))
    elif case == "edited model card":
        card = json.loads((bundle / "model_card.json").read_text())
        card["metrics"]["onnx_top1"] = 99.99
        (bundle / "model_card.json").write_text(json.dumps(card))
    elif case == "edited report":
        with open(bundle / "report.html", "a") as f:
            f.write("<!-- -->")
    elif case == "numpy.py beside predict.py":
        (bundle / "numpy.py").write_text("raise SystemExit('planted')\n")
    elif case == "a __pycache__ folder":
        (bundle / "__pycache__").mkdir()
    elif case == "a listed file removed":
        (bundle / "labels.txt").unlink()
    elif case == "a listed file as a link":
        shutil.copyfile(bundle / "student.onnx", shipped / "same.onnx")
        (bundle / "student.onnx").unlink()
        (bundle / "student.onnx").symlink_to(shipped / "same.onnx")  # the same bytes, but not the shipped file
    elif case == "a digest zeroed in SHA256SUMS":
        (bundle / "SHA256SUMS").write_text("\n".join(("0" * 64 + "  predict.py") if line.endswith("  predict.py")
                                                     else line for line in sums.splitlines()) + "\n")
    else:
        (bundle / "SHA256SUMS").write_text(sums[: len(sums) // 2])
    result = _cli("bundle", "verify", str(bundle))
    assert result.exit_code == 4 and named in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


# ---- the champion ---------------------------------------------------------------------
def test_a_tampered_champion_stops_the_ship_and_latest_stays(shipped):
    model = shipped / "shipped" / "tiny" / "v1" / "student.onnx"
    model.write_bytes(model.read_bytes()[:-64] + b"\0" * 64)  # a weaker model's file in its place
    result = _cli("run", "-m", "tiny.yaml", "-q", "-o", "student.train.epochs=1")
    assert result.exit_code == 4, result.output
    line = result.output.strip().splitlines()[-1]
    assert "champion v1:" in line and "v1/student.onnx: changed since it shipped" in line
    assert "cskd-pipeline promote" in line  # the fix
    assert _latest(shipped) == "v1" and not (shipped / "shipped/tiny/v2").exists()
    assert len(_trail(shipped)) == 1


# ---- the release trail ----------------------------------------------------------------
def test_promote_always_names_the_skipped_rule_and_the_replaced_version(two_versions):
    v1, v2 = (json.loads((two_versions / f"shipped/tiny/{v}/model_card.json").read_text())["metrics"]["onnx_top1"]
              for v in ("v1", "v2"))
    ship = _trail(two_versions)[-1]
    assert (ship["action"], ship["from"], ship["to"]) == ("ship", "v1", "v2")
    assert "champion rule skipped (ship.promote: always)" in ship["why"]
    assert f"replaced v1 (ONNX top-1 {v1:.2f}) with v2 (ONNX top-1 {v2:.2f})" in ship["why"]
    assert ship["gate"]["skipped"] == ["champion rule skipped (ship.promote: always)"]
    assert not any("champion" in rule for rule in ship["gate"]["rules"])  # the rule that did not run is not listed
    assert ship["why"].startswith(f"the gate passed: {len(ship['gate']['rules'])} rules ran")
    report = (two_versions / "shipped/tiny/v2/report.html").read_text()
    assert "champion rule skipped (ship.promote: always); replaced v1 (ONNX top-1" in report
    first = _trail(two_versions)[0]
    assert "first version of this name" in first["why"] and "skipped" not in first["why"]


@pytest.mark.parametrize("damage, says", [
    ('{"action": "promote", "from": "v2", "to"', "not a JSON line"),  # a torn write: no newline, half a line
    ("{}\n", "no known action"),
    ("[1]\n", "not a JSON object"),
    ('{"action": "promote", "to": "../elsewhere"}\n', "no version it moved latest to"),
])
def test_a_damaged_trail_stops_every_move_until_it_is_repaired(two_versions, damage, says):
    trail = two_versions / "shipped/tiny/releases.jsonl"
    whole = trail.read_text()
    trail.write_text(whole + damage)
    line = len(whole.splitlines()) + 1
    for command in (["promote", "tiny", "v1"], ["rollback", "tiny"], ["run", "-m", "tiny.yaml", "-q", *WORSE[:2],
                                                                       "-o", "student.train.lr=0.02"]):
        result = _cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert f"releases.jsonl:{line}: {says}" in result.output and "releases repair" in result.output
        assert _latest(two_versions) == "v2"
    assert not (two_versions / "shipped/tiny/v3").exists()  # the run stopped before writing a version
    repaired = _cli("releases", "repair", "tiny")
    assert repaired.exit_code == 0 and f"set aside 1 damaged line(s) ({line})" in repaired.output, repaired.output
    (aside,) = two_versions.glob("shipped/tiny/releases.damaged-*.jsonl")
    assert aside.read_text() == damage.rstrip("\n") + "\n"  # kept, never deleted
    moves = _trail(two_versions)
    assert moves[-1]["action"] == "repair" and aside.name in moves[-1]["why"]
    assert _cli("promote", "tiny", "v1").exit_code == 0 and _latest(two_versions) == "v1"
    assert _cli("rollback", "tiny").exit_code == 0 and _latest(two_versions) == "v2"  # the repair moved nothing


def test_moves_to_nothing_leave_nothing_and_a_tampered_version_is_not_promoted(two_versions):
    before = sorted(p.name for p in (two_versions / "shipped").iterdir())
    for command in (["promote", "other", "v1"], ["rollback", "other"], ["promote", "tiny", "v9"]):
        result = _cli(*command)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.name for p in (two_versions / "shipped").iterdir()) == before  # no shipped/other, no lock
    lines = len(_trail(two_versions))
    with open(two_versions / "shipped/tiny/v1/predict.py", "a") as f:
        f.write("\nprint('planted')\n")
    for command in (["promote", "tiny", "v1"], ["rollback", "tiny"]):
        result = _cli(*command)
        assert result.exit_code == 4 and "v1/predict.py: changed since it shipped" in result.output, result.output
        assert _latest(two_versions) == "v2" and len(_trail(two_versions)) == lines


# ---- export from what shipped ---------------------------------------------------------
def test_export_of_a_shipped_version_is_its_bytes_after_another_shipped(shipped):
    # the same student with INT8 (a wide budget: what is under test is the export, not the INT8 drop): v2
    int8 = ["-o", "export.targets=[onnx,onnx-int8]", "-o", "export.int8.max_drop=100"]
    result = _cli("run", "-m", "tiny.yaml", "-q", *int8)
    assert result.exit_code == 0, result.output
    result = _cli("run", "-m", "tiny.yaml", "-q", *WORSE)  # another student over it, ONNX only: v3
    assert result.exit_code == 0 and _latest(shipped) == "v3", result.output
    v2 = shipped / "shipped/tiny/v2"
    result = _cli("export", "tiny@v2", "--target", "onnx-int8", "--out", "deploy")
    assert result.exit_code == 0, result.output
    out = shipped / "deploy"
    assert (out / "student_int8.onnx").read_bytes() == (v2 / "student_int8.onnx").read_bytes()
    assert (out / "labels.txt").read_bytes() == (v2 / "labels.txt").read_bytes()
    card = json.loads((out / "export_card.json").read_text())
    report = json.loads((v2 / "report.json").read_text())
    top1 = report["metrics"]["models"]["onnx-int8"]["top1"]
    assert card["source"]["version"] == "v2" and card["target"] == "onnx-int8"
    assert card["test_metrics"]["top1"] == top1 and set(card["files"]) == {"student_int8.onnx", "labels.txt"}
    assert result.output.startswith(f"exported tiny v2 (onnx-int8, test top-1 {top1:.2f}, verified against SHA256SUMS)")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    latest = _cli("export", "tiny", "--target", "onnx", "--out", "deploy-latest")  # @latest by default: v3
    assert latest.exit_code == 0 and "exported tiny v3 (onnx" in latest.output, latest.output
    assert json.loads((shipped / "deploy-latest/export_card.json").read_text())["source"]["version"] == "v3"
    assert _cli("export", "tiny@v1", "--target", "onnx-int8", "--out", "x").exit_code == 2  # v1 holds no INT8


@pytest.mark.parametrize("args, code, says", [
    (["tiny@v1", "--target", "trt"], 2, "--target trt: tiny v1 does not hold it; it holds onnx"),
    (["tiny@v7", "--target", "onnx"], 2, "no shipped version v7 of 'tiny'"),
    (["tiny@v1", "--target", "onnx", "--out", ".cskd/artifacts/export/x"], 2, "inside store"),
    (["tiny@v1", "--target", "onnx", "--out", "shipped/tiny/v1"], 2, "inside ship.dir"),
    (["-m", "tiny.yaml", "--target", "onnx", "--out", "reports/x"], 2, "inside report.dir"),
    (["tiny@v1", "--target", "onnx", "--out", "deploy"], 4, "v1/labels.txt: changed since it shipped"),
])
def test_export_refuses_what_it_cannot_do_with_one_line(shipped, args, code, says):
    if code == 4:
        (shipped / "shipped/tiny/v1/labels.txt").write_text("tampered\n")
    result = _cli("export", *args)
    assert result.exit_code == code and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (shipped / "deploy").exists() and not (shipped / ".cskd/artifacts/export/x").exists()
