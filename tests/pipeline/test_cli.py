"""The CLI end to end on real data (digits): run, cache, reruns, gate, export, verify, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import REPO, edited, write_manifest


def _cli(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_run_ships_onnx_and_model_card(shipped_run):
    folder, _, code, out = shipped_run
    assert code == 0, out
    for kind in ("teacher", "distill", "export", "validate", "gate", "ship"):
        assert f"[{kind:<8}] ran" in out
    ship = folder / "shipped" / "tiny" / "latest"
    card = json.loads((ship / "model_card.json").read_text())
    assert (ship / "student.onnx").is_file() and (ship / "student.safetensors").is_file()
    assert (ship / "report.html").is_file() and (ship / "report.json").is_file()
    assert set(card["files"]) == {"student.onnx", "student.safetensors", "labels.txt", "predict.py"}
    from foundation.files import sha256_file as file_sha256

    assert all(file_sha256(ship / name) == digest for name, digest in card["files"].items())
    metrics = card["metrics"]
    assert metrics["split"] == "test" and metrics["samples"] == 359
    assert metrics["onnx_agreement"] >= 99.9  # ONNX and PyTorch agree on the top-1 class
    assert metrics["onnx_max_logit_diff"] < 1e-3
    assert card["gate"]["passed"] is True and len(card["artifacts"]["distill"]) == 64
    assert card["input"]["range"] == [0.0, 1.0]


def test_shipped_onnx_reproduces_reported_accuracy(shipped_run):
    from cskd.data import load_dataset
    from exports.ort_runtime import create_session, run_batched

    folder = shipped_run[0]
    card = json.loads((folder / "shipped" / "tiny" / "latest" / "model_card.json").read_text())
    test = load_dataset("digits").test
    logits = run_batched(create_session(folder / "shipped" / "tiny" / "latest" / "student.onnx"), test.images.numpy())
    acc = float((logits.argmax(1) == test.labels.numpy()).mean() * 100)
    assert acc == pytest.approx(card["metrics"]["onnx_top1"], abs=1e-6)


def test_rerun_recomputes_nothing_and_edits_rerun_only_downstream(shipped_run, monkeypatch):
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    code, out = _cli("run", "-m", str(manifest), "--quiet")
    assert code == 0 and "nothing recomputed" in out and " ran " not in out
    # a worse student: shipped only because the champion rule is off (test_release.py holds that rule)
    changed = write_manifest(folder, edited(student__train__epochs=1, ship={"dir": "shipped", "promote": "always"}),
                             "edited.yaml")
    code, out = _cli("run", "-m", str(changed), "--quiet")
    assert code == 0, out
    assert "[teacher ] cached" in out
    for kind in ("distill", "export", "validate", "gate", "ship"):
        assert f"[{kind:<8}] ran" in out
    code, out = _cli("plan", "-m", str(changed))
    assert code == 0 and out.count("cached") == 6


def test_impossible_gate_exits_1_and_ships_nothing(shipped_run, monkeypatch):
    folder, _, _, _ = shipped_run
    monkeypatch.chdir(folder)
    # A student trained one epoch at a tiny learning rate cannot match its teacher exactly.
    strict = write_manifest(folder, edited(name="strict", gate__max_drop=0.0, student__train__epochs=1,
                                           student__train__lr=1e-4), "strict.yaml")
    result = CliRunner().invoke(main, ["run", "-m", str(strict), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "gate failed, nothing shipped" in result.output and "student_top1" in result.output
    assert not (folder / "shipped" / "strict").exists()
    page = (folder / "reports" / "strict" / "latest" / "report.html").read_text()   # the report names the rule
    assert '<p class="status fail">FAIL: nothing shipped' in page
    failed = page[page.index('<ul class="failed">'):page.index("</ul>", page.index('<ul class="failed">'))]
    assert "student_top1 &gt;= teacher_top1 - max_drop</b>: measured" in failed and "needs &gt;=" in failed


def test_export_and_verify(shipped_run, monkeypatch):
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    code, out = _cli("export", "--target", "onnx", "-m", str(manifest), "--quiet")
    assert code == 0 and out.strip().endswith("exported/tiny/student.onnx") and Path(out.strip().splitlines()[-1]).is_file()
    code, out = _cli("verify", "-m", str(manifest))
    assert code == 0 and "every record and file matches its seal" in out


def test_tampered_artifact_is_detected_and_recomputed(shipped_run, monkeypatch):
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    export_id = next(p.id for p in plan(load_manifest(manifest)) if p.kind == "export")
    onnx_file = folder / ".cskd" / "artifacts" / "export" / export_id / "model.onnx"
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original[: len(original) // 2])  # truncated
    result = CliRunner().invoke(main, ["verify", "-m", str(manifest)])
    assert result.exit_code == 4 and "sha256 mismatch" in result.output
    code, out = _cli("run", "-m", str(manifest), "--quiet")
    assert code == 0 and "failed verification" in out and "[export  ] ran" in out
    assert _cli("verify", "-m", str(manifest))[0] == 0


def _subprocess(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_bad_manifest_is_one_line_exit_2_without_traceback(workdir):
    path = write_manifest(workdir, edited(teacher__train__epochs=-2))
    for command in ("validate", "run"):  # real processes: no traceback reaches stderr (plan, export: CliRunner below)
        proc = _subprocess([command, "-m", str(path)], workdir)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert str(path) in proc.stderr and "teacher.train.epochs: found -2" in proc.stderr
    for command in ("plan", "export"):
        result = CliRunner().invoke(main, [command, "-m", str(path)])
        assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
        assert len(result.output.strip().splitlines()) == 1 and "teacher.train.epochs: found -2" in result.output
    assert not (workdir / ".cskd").exists()  # nothing was computed or written


def test_default_manifest_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)
    code, out = _cli("validate")
    assert code == 0 and "manifests/quickstart.yaml: valid" in out


def test_resnet8x4_manifest_validates_and_stops_at_missing_data(workdir):
    # In this process: test_bad_manifest_... above shows, in real processes, that no traceback escapes.
    code, _ = _cli("validate", "-m", str(REPO / "manifests" / "resnet8x4.yaml"))
    assert code == 0
    # Without a download (the manifest asks for one; test_a_failed_download_... covers that path):
    result = CliRunner().invoke(main, ["run", "-m", str(REPO / "manifests" / "resnet8x4.yaml"), "-o", "data.download=false"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and result.output.count("\n") == 1
    assert "data.root: data/cifar100 not found" in result.output and "data.download: true" in result.output
    assert not (workdir / ".cskd").exists()  # checked before a store is made


def test_schema_is_json():
    code, out = _cli("schema")
    assert code == 0 and "properties" in json.loads(out)


@pytest.mark.slow
def test_fashion_mnist_end_to_end(workdir, fashion_root):
    text = f"""
name: fashion
data: {{name: fashion_mnist, root: "{fashion_root}", max_train_samples: 2000, max_test_samples: 1000}}
teacher:
  model: resnet8
  train: {{epochs: 2, batch_size: 64, lr: 0.05, schedule: cosine, augment: {{crop_padding: 2, flip: true}}}}
student:
  model: resnet8
  loss: {{kind: cskd, preset: core}}
  train: {{epochs: 2, batch_size: 64, lr: 0.05, schedule: cosine, augment: {{crop_padding: 2, flip: true}}}}
gate: {{max_drop: 100.0}}
"""
    manifest = write_manifest(workdir, text, "fashion.yaml")
    code, out = _cli("run", "-m", str(manifest), "--quiet")
    assert code == 0, out
    card = json.loads((workdir / "shipped" / "fashion" / "latest" / "model_card.json").read_text())
    assert card["data"]["test_samples"] == 1000 and card["data"]["in_channels"] == 1
    assert card["metrics"]["student_top1"] > 40  # 2 epochs on 1,800 images: far above chance (10%)
    assert card["metrics"]["onnx_agreement"] >= 99.9
    assert np.isfinite(card["metrics"]["onnx_max_logit_diff"])


def test_a_run_off_a_terminal_prints_one_line_per_epoch_and_keeps_a_log(workdir):
    path = write_manifest(workdir, edited(teacher__train__epochs=2, student__train__epochs=2))
    proc = _subprocess(["run", "-m", str(path)], workdir)  # stdout and stderr are pipes, not a terminal
    assert proc.returncode == 0, proc.stderr
    epochs = [line for line in proc.stdout.splitlines() if " epoch " in line]
    assert [line.split(" epoch ")[1].split()[0] for line in epochs] == ["1/2", "2/2", "1/2", "2/2"]
    assert epochs[0].startswith("[teacher ] resnet8 epoch 1/2") and "val top-1" in epochs[0] and "ETA" in epochs[0]
    assert " loss " in epochs[0] and " ce " not in epochs[0]  # the teacher's one term is its loss: printed once
    assert "cs_cswt" in epochs[2] and "img/s" in epochs[2]  # the student's lines carry every loss term
    log = (workdir / "reports" / "tiny" / "latest" / "run.log").read_text()
    assert all(line in log for line in epochs) and "[gate    ] ran" in log
    # --quiet, off a terminal too (click's runner): the student trains again, and no epoch line shows
    code, out = _cli("run", "-m", str(path), "--quiet", "--force", "distill")
    assert code == 0 and "[distill ] ran" in out and " epoch " not in out, out


def test_two_edited_copies_of_one_name_keep_both_reports_and_bundles(shipped_run, monkeypatch):
    # Copy-tweak-run: the second run of the same name must not destroy the first one's result.
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    first = (folder / "shipped" / "tiny" / "latest").resolve()
    # another lr, whatever its accuracy against the champion (test_release.py holds the champion rule)
    tweaked = write_manifest(folder, edited(student__train__lr=0.02, ship={"dir": "shipped", "promote": "always"}),
                             "tweaked.yaml")
    code, out = _cli("run", "-m", str(tweaked), "--quiet")
    assert code == 0, out
    second = (folder / "shipped" / "tiny" / "latest").resolve()
    assert first != second and (first / "student.onnx").is_file() and (second / "student.onnx").is_file()
    code, out = _cli("runs", "-m", str(tweaked), "--json")
    runs = json.loads(out)
    assert code == 0 and len(runs) >= 2 and all(Path(r["report"]).is_file() for r in runs)
    code, out = _cli("diff", runs[0]["run"], runs[-1]["run"])
    assert code == 0 and "| `manifest.student.train.lr` | 0.05 | 0.02 |" in out, out
    reports = [json.loads(Path(r["report"]).read_text()) for r in (runs[0], runs[-1])]
    for model in ("student", "onnx"):  # every model's metrics, not only the headline ones
        left, right = (r["metrics"]["models"][model]["top1"] for r in reports)
        assert (f"| `metrics.models.{model}.top1` | {left:.2f} | {right:.2f} |" in out) == (left != right), out
    # Rerunning a lineage that already shipped reuses its version instead of writing a new one;
    # `runs` shows the override it ran with, and the version it shipped.
    code, _ = _cli("run", "-m", str(tweaked), "--quiet", "-o", "report.dir=reports")
    assert code == 0 and (folder / "shipped" / "tiny" / "latest").resolve() == second
    last = json.loads(_cli("runs", "-m", str(tweaked), "--json")[1])[-1]
    assert last["overrides"] == ["report.dir=reports"] and last["shipped"] == second.name
    table = _cli("runs", "-m", str(tweaked))[1].splitlines()
    assert "| overrides |" in table[0] and "`report.dir=reports`" in table[-1] and f"| {second.name} (latest) |" in table[-1]
    assert _cli("diff", "no-such-run", runs[0]["run"])[0] == 2


def test_the_bundle_says_how_to_feed_the_model_and_predict_py_reaches_the_reported_accuracy(shipped_run, tmp_path):
    import stat

    from PIL import Image

    from cskd.data import load_dataset

    bundle = shipped_run[0] / "shipped" / "tiny" / "latest"
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["input"]["range"] == [0.0, 1.0] and "do not normalise again" in card["input"]["normalisation"]
    assert card["output"]["shape"] == ["batch", 10] and card["class_names"] == [str(i) for i in range(10)]
    assert (bundle / "labels.txt").read_text().split() == card["class_names"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in bundle.iterdir())
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(bundle / "student.onnx")).metadata_props}
    assert json.loads(meta["cskd.class_names"]) == card["class_names"] and "cskd.input" in meta
    # The digits' test images as the PNG files a user would have; predict.py sees only those.
    test = load_dataset("digits").test
    files = []
    for i, image in enumerate(test.images[:, 0].numpy()):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image, mode="L").save(files[-1])
    proc = subprocess.run([sys.executable, str(bundle / "predict.py"), str(bundle / "student.onnx"), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    predicted = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    accuracy = np.mean([p == str(int(y)) for p, y in zip(predicted, test.labels, strict=True)]) * 100
    assert accuracy == pytest.approx(card["metrics"]["onnx_top1"], abs=1e-9)


def test_a_failed_download_is_one_line_exit_2_and_leaves_no_folder(workdir, monkeypatch):
    """resnet8x4.yaml sets data.download: true; where the network is out of reach (here: a
    proxy that refuses connections) the run stops at once, says so, and creates nothing."""
    import shutil

    shutil.copytree(REPO / "manifests", workdir / "manifests")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # urllib reads them per request
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "")
    result = CliRunner().invoke(main, ["run", "-m", "resnet8x4", "-q"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.output.count("\n") == 1 and "data/cifar100: downloading cifar100 failed" in result.output
    assert not (workdir / "data").exists()  # the folders the attempt made are gone again
