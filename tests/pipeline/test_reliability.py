"""Pipeline-level protections: concurrent runs share the store safely, a full disk during
commit leaves no partial artifact, SIGTERM during a run exits 143 and resumes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from foundation.store import ArtifactStore
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

    from foundation import store as store_module
    from pipeline.cli import main

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


@pytest.mark.parametrize("signame", ["KILL", "TERM"])
def test_a_run_killed_or_stopped_during_distill_resumes_and_completes(shipped_run, workdir, signame):
    """The run stops itself at epoch 2, step 3 of the distillation through the engine's test hook
    (a real signal at a fixed point, not a stopwatch), on a copy of the tiny run's store (the
    teacher is cached). SIGKILL: nothing looks complete and the rerun starts the distillation from its
    epoch-1 checkpoint; SIGTERM: exit 143 with one line, a checkpoint at the step, and the rerun
    resumes there. Either way the rerun completes every epoch once and the store verifies."""
    from click.testing import CliRunner

    from cskd.interrupts import SIGNAL_HOOK
    from pipeline.cli import main

    shutil.copytree(shipped_run[0] / ".cskd", workdir / ".cskd")
    manifest = write_manifest(workdir, edited(student__train__epochs=3, student__train__batch_size=64))
    distills = workdir / ".cskd" / "artifacts" / "distill"
    before = set(distills.iterdir())  # the tiny run's own student
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "--quiet"], cwd=workdir,
                          env={**os.environ, SIGNAL_HOOK: f"distill:2:3:{signame}"}, capture_output=True, text=True,
                          timeout=600)
    signum = getattr(signal, f"SIG{signame}")
    assert set(distills.iterdir()) == before  # nothing looks complete
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 128 + signum, proc.stderr
        assert "checkpoint saved" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert not any((workdir / ".cskd" / "tmp").iterdir())  # the store is consistent at once
    rerun = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"])  # this process: the killed one is gone
    assert rerun.exit_code == 0, rerun.output
    assert "[teacher ] cached" in rerun.output and "[distill ] ran" in rerun.output
    assert not any((workdir / ".cskd" / "tmp").iterdir())  # the killed run's temp folder is gone too
    (made,) = set(distills.iterdir()) - before
    history = (made / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in history] == [1, 2, 3]
    verify = CliRunner().invoke(main, ["verify", "-m", str(manifest)])
    assert verify.exit_code == 0, verify.output


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
