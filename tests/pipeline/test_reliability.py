"""Pipeline-level protections: concurrent runs share the store safely, a full disk during
commit leaves no partial artifact, SIGTERM during a run exits 143 and resumes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

from pipeline.core.store import ArtifactStore
from tests.conftest import edited, write_manifest


def _start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_runs_of_one_manifest(workdir):
    manifest = write_manifest(workdir, edited(teacher__train__epochs=1, student__train__epochs=1))
    procs = [_start(["run", "-m", str(manifest), "--quiet"], workdir) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each stage was computed once: the second run waited on the lock, then reused it.
    ran = sum(out.count(" ran ") for out, _ in outputs)
    assert ran == 6  # teacher, distill, export, validate, gate, ship: once each
    store = ArtifactStore(workdir / ".cskd")
    assert store.all_ids() and all(store.problems(k, i) == [] for k, i in store.all_ids())
    assert len(list((workdir / ".cskd" / "artifacts" / "distill").iterdir())) == 1


def test_full_disk_during_commit_leaves_nothing_partial(tiny_manifest, workdir, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.core import store as store_module

    real_write = store_module.Path.write_text

    def full_disk(self, text, *a, **kw):  # the disk fills up exactly when the record is written
        if self.name == "artifact.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, text, *a, **kw)

    monkeypatch.setattr(store_module.Path, "write_text", full_disk)
    result = CliRunner().invoke(main, ["run", "-m", str(tiny_manifest), "--quiet"])
    assert result.exit_code == 4 and "disk full while writing" in result.output
    assert not list((workdir / ".cskd" / "artifacts").glob("*/*"))  # the store exists: the failure came later
    assert not any((workdir / ".cskd" / "tmp").iterdir())
    monkeypatch.undo()
    assert CliRunner().invoke(main, ["run", "-m", str(tiny_manifest), "--quiet"]).exit_code == 0


def test_sigterm_during_distill_exits_143_and_resumes(workdir):
    signum = signal.SIGTERM  # SIGINT takes the same path (engine tests cover both signals)
    manifest = write_manifest(workdir, edited(student__train__epochs=6, student__train__batch_size=32))
    proc = _start(["run", "-m", str(manifest), "--quiet"], workdir)
    deadline = time.time() + 300
    while time.time() < deadline and not list((workdir / ".cskd" / "work").glob("distill-*/metrics.jsonl")):
        time.sleep(0.1)
    assert proc.poll() is None
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    assert "checkpoint saved" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any((workdir / ".cskd" / "tmp").iterdir())  # the store is consistent
    assert not (workdir / ".cskd" / "artifacts" / "distill").exists()
    rerun = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "--quiet"],
                           cwd=workdir, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    history = next((workdir / ".cskd" / "artifacts" / "distill").glob("*/metrics.jsonl")).read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in history] == [1, 2, 3, 4, 5, 6]


def test_teacher_checkpoint_by_path_is_checked_before_use(shipped_run, workdir):
    from click.testing import CliRunner

    from cskd.checkpoint import sha256_file
    from pipeline.cli import main

    run_folder = shipped_run[0]
    weights = next((run_folder / ".cskd" / "artifacts" / "teacher").glob("*/model.safetensors"))
    good = sha256_file(weights)
    teacher = {"model": "resnet8", "checkpoint": {"path": str(weights), "sha256": good}}
    ok = write_manifest(workdir, edited(teacher=teacher, student__train__epochs=1), "ok.yaml")
    result = CliRunner().invoke(main, ["run", "-m", str(ok), "--quiet"])
    assert result.exit_code == 0 and "loaded checkpoint" in result.output
    wrong_sha = write_manifest(workdir, edited(teacher={**teacher, "checkpoint": {"path": str(weights), "sha256": "f" * 64}}),
                               "sha.yaml")
    result = CliRunner().invoke(main, ["run", "-m", str(wrong_sha), "--quiet"])
    assert result.exit_code == 2 and "the manifest declares ffff" in result.output
    wrong_arch = write_manifest(workdir, edited(teacher={**teacher, "model": "resnet14"}), "arch.yaml")
    result = CliRunner().invoke(main, ["run", "-m", str(wrong_arch), "--quiet"])
    assert result.exit_code == 2 and "layer 'layer1.1.conv1.weight' missing" in result.output
