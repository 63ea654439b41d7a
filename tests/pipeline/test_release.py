"""After a model ships: the champion rule, promote and rollback with their audit trail, gc that
cannot lose work, a bundle that works wherever it is copied, and export into a folder of one's own."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from tests.conftest import REPO, edited, working_dir, write_manifest


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _latest(folder: Path, name: str = "quickstart") -> str:
    return os.readlink(folder / "shipped" / name / "latest")


def test_a_worse_experiment_does_not_replace_the_champion_and_every_move_is_recorded(tiny_trained, workdir):
    # The tiny manifest: the champion rule compares two students' ONNX predictions, whatever trained them
    manifest = str(tiny_trained)  # its first run ships the stored student (nothing trains)
    assert _cli("run", "-m", manifest, "-q").exit_code == 0
    assert _latest(workdir, "tiny") == "v1"
    champion_top1 = json.loads((workdir / "shipped/tiny/v1/model_card.json").read_text())["metrics"]["onnx_top1"]
    worse = ["-o", "student.train.epochs=1"]  # one student epoch instead of two: within the teacher rule, worse
    result = _cli("run", "-m", manifest, "-q", *worse)
    assert result.exit_code == 1, result.output
    assert "onnx_top1 >= champion v1 top1 - max_regression" in result.output and f"{champion_top1:.2f}" in result.output
    assert "student_top1 >= teacher_top1 - max_drop" not in result.output  # the teacher rule held
    assert _latest(workdir, "tiny") == "v1" and not (workdir / "shipped/tiny/v2").exists()
    result = _cli("run", "-m", manifest, "-q", *worse, "-o", "ship.promote=always")
    assert result.exit_code == 0, result.output
    assert _latest(workdir, "tiny") == "v2"
    assert _cli("promote", "tiny", "v1").exit_code == 0 and _latest(workdir, "tiny") == "v1"
    assert _cli("rollback", "tiny").exit_code == 0 and _latest(workdir, "tiny") == "v2"
    assert _cli("rollback", "tiny").exit_code == 0 and _latest(workdir, "tiny") == "v1"
    assert _cli("rollback", "tiny").exit_code == 2  # nothing before v1
    moves = [json.loads(line) for line in (workdir / "shipped/tiny/releases.jsonl").read_text().splitlines()]
    assert [(m["action"], m["from"], m["to"]) for m in moves] == [
        ("ship", None, "v1"), ("ship", "v1", "v2"), ("promote", "v2", "v1"), ("rollback", "v1", "v2"),
        ("rollback", "v2", "v1")]
    assert moves[0]["run"] and moves[0]["gate"]["passed"] is True and all(m["time"] and m["why"] for m in moves)
    rows = json.loads(_cli("runs", "-m", manifest, "--json").output)
    assert [(r["gate"], r["shipped"], r["became_latest"]) for r in rows] == [
        ("PASS", "v1", True), ("FAIL", None, False), ("PASS", "v2", True)]


def test_rerunning_a_shipped_lineage_keeps_its_version_and_recomputes_nothing(shipped_run, tmp_path, monkeypatch):
    source, _, code, _ = shipped_run
    assert code == 0
    folder = tmp_path / "copy"
    shutil.copytree(source, folder, symlinks=True)  # other tests ship other lineages into the original
    monkeypatch.chdir(folder)
    assert _cli("promote", "tiny", "v1").exit_code == 0
    versions = sorted(p.name for p in (folder / "shipped/tiny").glob("v*"))
    result = _cli("run", "-m", "tiny.yaml", "-q")  # the champion is this very model
    assert result.exit_code == 0 and "nothing recomputed" in result.output and " ran " not in result.output
    assert _latest(folder, "tiny") == "v1" and sorted(p.name for p in (folder / "shipped/tiny").glob("v*")) == versions


# ---- gc ---------------------------------------------------------------------------------
def _run_ids(folder: Path, name: str) -> dict[str, str]:
    return json.loads(next(folder.glob(f"*/{name}/latest/report.json")).read_text())["artifacts"]


def _exists(folder: Path, ids: dict[str, str]) -> bool:
    return all((folder / ".cskd/artifacts" / kind / art_id).is_dir() for kind, art_id in ids.items())


def test_gc_keeps_every_manifests_lineage_whatever_its_report_folder_and_unlinks_planted_links(workdir):
    a = write_manifest(workdir, edited(name="a", report={"dir": "reports_a"}), "a.yaml")
    # b: a lineage of its own from its gate on (its student is a's: one training serves both)
    b = write_manifest(workdir, edited(name="b", report={"dir": "reports_b"}, gate={"max_drop": 99.0,
                                                                                  "min_onnx_agreement": 99.0}), "b.yaml")
    assert _cli("run", "-m", str(b), "-q").exit_code == 0
    b_ids = _run_ids(workdir, "b")
    assert _cli("run", "-m", str(a), "-q", "-o", "gate.min_student_top1=100").exit_code == 1  # a failed run
    failed_gate = _run_ids(workdir, "a")["gate"]
    assert _cli("run", "-m", str(a), "-q").exit_code == 0
    a_ids = _run_ids(workdir, "a")
    assert {k for k in b_ids if b_ids[k] != a_ids.get(k)} >= {"gate", "ship"}  # b's own artifacts
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the pipeline's")
    os.symlink(outside, workdir / ".cskd/artifacts/distill/planted")
    result = _cli("gc", "-m", str(a), "--yes")
    assert result.exit_code == 0, result.output
    assert _exists(workdir, b_ids) and _exists(workdir, a_ids)
    assert not (workdir / ".cskd/artifacts/gate" / failed_gate).exists()
    assert not os.path.lexists(workdir / ".cskd/artifacts/distill/planted")
    assert (outside / "keep.txt").read_text() == "not the pipeline's"
    assert "MiB" in result.output.splitlines()[-1]
    for folder in ("reports_a", "reports_b"):  # without any report, the index and the cards still say
        shutil.rmtree(workdir / folder)
    result = _cli("gc", "-m", str(a), "--yes")
    assert result.exit_code == 0 and _exists(workdir, b_ids) and _exists(workdir, a_ids)
    assert "removed 0 entries" in result.output and (workdir / ".cskd/artifacts/teacher").is_dir()


def test_gc_stops_on_an_unreadable_card_or_index_and_removes_nothing(shipped_run, tmp_path):
    source, _, code, _ = shipped_run
    assert code == 0
    shutil.copytree(source, tmp_path / "copy", symlinks=True)
    folder = tmp_path / "copy"
    with working_dir(folder):
        (folder / "shipped/tiny/v1/model_card.json").write_text("{broken")
        before = sorted(p.name for p in (folder / ".cskd/artifacts").rglob("*"))
        result = _cli("gc", "-m", "tiny.yaml", "--yes")  # a sealed bundle's broken card: it fails its seal
        assert result.exit_code == 4 and "shipped/tiny/v1/model_card.json: changed since it shipped" in result.output
        assert "gc removed nothing" in result.output
        (folder / ".cskd/runs.jsonl").write_text("not json\n")
        result = _cli("gc", "-m", "tiny.yaml", "--yes")
        assert result.exit_code == 4 and "runs.jsonl:1" in result.output, result.output
        assert sorted(p.name for p in (folder / ".cskd/artifacts").rglob("*")) == before


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "T"
    except OSError:
        return False


@pytest.mark.slow  # a real run in a subprocess, held still inside its student's training while gc runs
def test_gc_during_a_training_run_removes_nothing_of_it(workdir):
    from cskd.interrupts import SIGNAL_HOOK

    manifest = write_manifest(workdir)
    # the run stops itself (SIGSTOP) after the first step of the student's second epoch
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SIGNAL_HOOK: "distill:2:1:STOP"}
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "-q"], cwd=workdir,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not _stopped(run.pid):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before the distill stage trained"
            time.sleep(0.1)
        assert list((workdir / ".cskd/work").glob("distill-*/metrics.jsonl"))  # inside the distill stage
        result = _cli("gc", "-m", str(manifest), "--yes")
        assert result.exit_code == 0, result.output
        assert "in use by a running pipeline" in result.output or "removed 0 entries" in result.output
        assert list((workdir / ".cskd/work").glob("distill-*/metrics.jsonl"))  # its work folder is still there
    finally:
        os.kill(run.pid, signal.SIGCONT)
    out, _ = run.communicate(timeout=240)
    assert run.returncode == 0, out
    assert (workdir / "shipped/tiny/latest/student.onnx").is_file()
    assert _exists(workdir, _run_ids(workdir, "tiny"))
    assert _cli("verify", "-m", str(manifest)).exit_code == 0


# ---- the bundle -------------------------------------------------------------------------
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.hrefs += [value for key, value in attrs if key == "href" and value]


def test_a_copied_bundle_links_its_own_files_predicts_and_verifies(shipped_run, tmp_path):
    source, _, code, _ = shipped_run
    assert code == 0
    bundle = tmp_path / "elsewhere" / "model"
    shutil.copytree(source / "shipped/tiny/v1", bundle)
    links = _Links()
    links.feed((bundle / "report.html").read_text())
    assert links.hrefs and all((bundle / href).is_file() for href in links.hrefs), links.hrefs
    readme = (bundle / "README.md").read_text()
    assert "predict.py" in readme and "sha256" in readme and "student.onnx" in readme
    from cskd.data import load_dataset

    test = load_dataset("digits").test
    for i in range(3):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"good{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = [str(tmp_path / f"good{i}.png") for i in range(3)] + [str(tmp_path / "bad.png")]
    proc = subprocess.run([sys.executable, "predict.py", "student.onnx", *files], cwd=bundle, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and proc.stderr.count("\n") == 1 and "bad.png" in proc.stderr
    code = ("import json, sys; from predict import Classifier; from cskd.data import load_dataset; "
            "t = load_dataset('digits').test; "
            "out = Classifier('student.onnx').predict([x[0] for x in t.images.numpy()]); "
            "print(json.dumps([r['label'] for r in out]))")
    env = {**os.environ, "PYTHONPATH": f"{bundle}{os.pathsep}{REPO}"}
    labels = json.loads(subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True,
                                       env=env, check=True, timeout=120).stdout)
    card = json.loads((bundle / "model_card.json").read_text())
    top1 = float(np.mean([card["class_names"].index(label) == int(y) for label, y in zip(labels, test.labels, strict=True)])) * 100
    assert abs(top1 - card["metrics"]["onnx_top1"]) < 1e-9
    assert _cli("bundle", "verify", str(bundle)).exit_code == 0
    (bundle / "labels.txt").write_text("tampered\n")
    result = _cli("bundle", "verify", str(bundle))
    assert result.exit_code == 4 and "labels.txt" in result.output


def test_export_writes_into_out_never_over_a_users_file_and_gc_leaves_it(shipped_run, monkeypatch):
    folder, manifest, code, _ = shipped_run
    assert code == 0
    monkeypatch.chdir(folder)
    result = _cli("export", "-m", str(manifest), "--target", "onnx-int8", "--out", "deploy", "-q")
    assert result.exit_code == 0, result.output
    written = folder / "deploy" / "student_int8.onnx"
    assert result.output.strip().splitlines()[-1] == str(Path("deploy") / "student_int8.onnx") and written.is_file()
    assert ".cskd" not in result.output
    assert _cli("export", "-m", str(manifest), "--target", "onnx-int8", "--out", "deploy", "-q").exit_code == 0
    assert _cli("gc", "-m", str(manifest), "--yes").exit_code == 0
    assert written.is_file()
    (folder / "mine").mkdir()
    (folder / "mine" / "student.onnx").write_text("the user's own")
    result = _cli("export", "-m", str(manifest), "--target", "onnx", "--out", "mine", "-q")
    assert result.exit_code == 2 and "mine/student.onnx" in result.output
    assert (folder / "mine" / "student.onnx").read_text() == "the user's own"
