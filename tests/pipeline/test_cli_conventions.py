"""CLI conventions: --version, init, -o/--set overrides, --json, gc, run --force, examples in --help."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import edited, write_manifest


def _cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_version_and_examples_in_every_help():
    code, out = _cli("--version")
    assert code == 0 and out.startswith("cskd-pipeline, version ")
    for name in main.commands:
        code, out = _cli(name, "--help")
        assert code == 0 and "Example" in out, name


def test_init_writes_a_starter_that_runs_as_written_and_never_overwrites(workdir):
    code, out = _cli("init", "project")
    assert code == 0 and (workdir / "project" / "manifest.yaml").is_file()
    assert _cli("validate", "-m", "project/manifest.yaml")[0] == 0
    before = (workdir / "project" / "manifest.yaml").read_text()
    assert _cli("init", "project")[0] == 2 and (workdir / "project" / "manifest.yaml").read_text() == before


def test_overrides_validate_like_the_file_and_enter_the_ids(workdir):
    write_manifest(workdir)
    write_manifest(workdir, edited(student__train__epochs=5, student__loss={"kind": "kd"}), "edited.yaml")
    _, by_file = _cli("plan", "-m", "edited.yaml", "--json")
    _, by_set = _cli("plan", "-m", "tiny.yaml", "--json", "-o", "student.train.epochs=5", "-o", "student.loss={kind: kd}")
    assert json.loads(by_file) == json.loads(by_set)
    code, out = _cli("plan", "-m", "tiny.yaml", "-o", "student.train.epoch=5")
    assert code == 2 and "did you mean 'epochs'" in out
    assert _cli("plan", "-m", "tiny.yaml", "-o", "no-equals-sign")[0] == 2


@pytest.fixture
def copied_run(shipped_run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(shipped_run[0], work, symlinks=True)
    monkeypatch.chdir(work)
    assert _cli("promote", "tiny", "v1")[0] == 0  # other tests may have shipped other lineages into the original
    return work, work / "tiny.yaml"


def test_json_outputs_parse(copied_run):
    work, manifest = copied_run
    assert all(row["cached"] for row in json.loads(_cli("plan", "-m", str(manifest), "--json")[1]))
    assert json.loads(_cli("verify", "-m", str(manifest), "--json")[1])["problems"] == []
    assert json.loads(_cli("runs", "-m", str(manifest), "--json")[1])[0]["gate"] == "PASS"


def test_force_recomputes_the_stage_and_what_reads_it(copied_run):
    work, manifest = copied_run
    code, out = _cli("run", "-m", str(manifest), "--quiet", "--force", "gate")
    assert code == 0 and "[gate    ] ran" in out and "[ship    ] ran" in out and "[validate] cached" in out, out
    assert any((work / ".cskd" / "superseded").iterdir())
    assert _cli("run", "-m", str(manifest), "--force", "nonsense")[0] == 2


def test_gc_keeps_what_the_latest_run_uses_and_is_a_dry_run_by_default(copied_run):
    work, manifest = copied_run
    other = write_manifest(work, edited(student__train__epochs=1, name="other-name"), "other.yaml")
    assert _cli("run", "-m", str(other), "--quiet")[0] == 0
    assert _cli("run", "-m", str(manifest), "--quiet", "--force", "gate")[0] == 0  # leaves a superseded gate
    artifacts = sorted((work / ".cskd" / "artifacts").glob("*/*"))
    code, out = _cli("gc", "-m", str(manifest))
    assert code == 0 and "would remove" in out and sorted((work / ".cskd" / "artifacts").glob("*/*")) == artifacts
    code, out = _cli("gc", "-m", str(manifest), "--yes")
    assert code == 0 and "removing" in out and not any((work / ".cskd" / "superseded").iterdir())
    for m in (manifest, other):  # both manifests' latest runs are still complete in the store
        assert all(row["cached"] for row in json.loads(_cli("plan", "-m", str(m), "--json")[1])), m


def test_gc_reads_only_its_manifests_store(copied_run):
    """gc needs the store alone, read without the schema (no stage registries, no torch): a manifest
    broken elsewhere still names its store; a bad store is one line, exit 2."""
    work, manifest = copied_run
    broken = write_manifest(work, edited(student__model="no-such-net"), "broken.yaml")
    assert _cli("validate", "-m", str(broken))[0] == 2
    code, out = _cli("gc", "-m", str(broken))
    assert (code, out) == _cli("gc", "-m", str(manifest)) and out.startswith("kept ") and "kept 0 " not in out
    code, out = _cli("gc", "-m", str(write_manifest(work, edited(store="../elsewhere"), "outside.yaml")))
    assert code == 2 and out.count("\n") == 1 and "outside.yaml: store: " in out, out


def test_terminal_progress_and_verbose_run_end_to_end(workdir):
    # progress=True drives the rich display (an overall line, the engine's per-epoch bars with the loss)
    # through a real training; verbose adds each stage's recipe.
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import run_pipeline

    manifest = load_manifest(write_manifest(workdir, edited(teacher__train__epochs=1, student__train__epochs=1)))
    lines: list[str] = []
    outcome = run_pipeline(manifest, progress=True, verbose=True, echo=lines.append)
    assert outcome.shipped is not None
    recipes = [line for line in lines if " recipe " in line]
    assert len(recipes) == len(outcome.reports) and '"epochs": 1' in recipes[0]
    assert any(line.startswith("[teacher ] resnet8 epoch 1/1") for line in lines)


def test_init_then_run_from_the_new_folder_finds_its_manifest(workdir, monkeypatch):
    code, out = _cli("init", "project")
    assert code == 0 and out.strip().endswith("next: cd project && cskd-pipeline run")
    monkeypatch.chdir(workdir / "project")
    code, out = _cli("plan")  # no -m: ./manifest.yaml, not the repository's quickstart
    assert code == 0 and "teacher" in out
    code, out = _cli("validate")
    assert code == 0 and out.startswith("manifest.yaml: valid (my-model:")


def test_init_example_writes_the_digits_as_an_image_folder_and_a_manifest_that_reads_it(workdir):
    """The offline next step after the quickstart: the "your own image folder" path, on images a
    newcomer already has. PNG files per class in train/ and test/, and the manifest reads them."""
    from PIL import Image

    from pipeline.manifest_io import load_manifest

    code, out = _cli("init", "first", "--example")
    assert code == 0, out
    assert out.splitlines() == ["wrote first/images (1438 training and 359 test PNG images, a folder per class)",
                                "wrote first/manifest.yaml; next: cd first && cskd-pipeline run"]
    images = workdir / "first" / "images"
    for split, count in (("train", 1438), ("test", 359)):
        assert sorted(p.name for p in (images / split).iterdir()) == [str(d) for d in range(10)]
        files = sorted((images / split).rglob("*.png"))
        assert len(files) == count
        with Image.open(files[0]) as image:
            assert image.mode == "L" and image.size == (8, 8)
    manifest = load_manifest(workdir / "first" / "manifest.yaml")
    assert manifest.data.name == "imagefolder" and manifest.data.grayscale and str(manifest.data.root) == "images"
    # never over something that is there, and nothing half-written next to it
    (workdir / "second" / "images").mkdir(parents=True)
    code, out = _cli("init", "second", "--example", "digits")
    assert code == 2 and "images already exists" in out
    assert [p.name for p in (workdir / "second").iterdir()] == ["images"]
    assert not any((workdir / "second" / "images").iterdir())


def test_init_example_copies_a_ready_manifest_and_names_them_all_for_one_it_does_not_have(workdir, monkeypatch):
    from pipeline.cli_base import EXAMPLES

    code, out = _cli("init", "cifar", "--example", "resnet8x4")
    assert code == 0 and out.strip() == "wrote cifar/manifest.yaml; next: cd cifar && cskd-pipeline run", out
    assert (workdir / "cifar" / "manifest.yaml").read_text() == (EXAMPLES / "resnet8x4.yaml").read_text()
    monkeypatch.chdir(workdir / "cifar")
    code, out = _cli("validate")
    assert code == 0 and out.startswith("manifest.yaml: valid (resnet8x4:"), out
    monkeypatch.chdir(workdir)
    # the order of earlier versions (`init --example DIR`) and a misspelt name: one line, nothing written
    for args, fix in ((["--example", "my-first"], "cskd-pipeline init my-first --example NAME"),
                      (["there", "--example", "quikstart"], "cskd-pipeline init there --example NAME")):
        code, out = _cli("init", *args)
        assert code == 2 and len(out.strip().splitlines()) == 1, out
        assert "no example named" in out and "digits, cifar10-cpu, " in out and "quickstart" in out and fix in out, out
    assert sorted(p.name for p in workdir.iterdir()) == ["cifar"]


@pytest.mark.slow  # a whole run on the example folder (about a minute)
def test_the_example_folder_runs_and_ships(workdir, monkeypatch):
    assert _cli("init", "first", "--example")[0] == 0
    monkeypatch.chdir(workdir / "first")
    code, out = _cli("run", "--quiet")
    assert code == 0, out
    assert (workdir / "first" / "shipped" / "digits-folder" / "latest" / "student.onnx").is_file()


def test_a_bare_name_is_looked_up_here_before_manifests(workdir):
    write_manifest(workdir, edited(name="here"), "mine.yaml")
    code, out = _cli("validate", "-m", "mine")
    assert code == 0 and "mine.yaml: valid (here:" in out


def test_targets_marks_a_missing_back_end_with_its_install_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    code, out = _cli("targets")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and "[missing: OpenVINO is not installed: pip install 'cskd-pipeline[openvino]']" in lines["openvino"]
    assert "missing" not in lines["onnx"] and "missing" not in lines["onnx-int8"]


def test_the_examples_ship_with_the_package_and_resolve_from_any_folder(workdir):
    """`-m quickstart` from a folder with no manifests/: the example installed with the package,
    which is what a checkout's manifests/ links to; a local file of that name still comes first."""
    from pipeline.cli_base import EXAMPLES

    assert not (workdir / "manifests").exists()
    names = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
    assert {"quickstart", "resnet8x4", "fashion-mnist"} <= set(names)
    for name in ("quickstart", "resnet8x4"):  # the others need their image folders to validate
        code, out = _cli("validate", "-m", name)
        assert code == 0 and f"{EXAMPLES / name}.yaml: valid" in out, out
    code, out = _cli("plan", "-m", "quickstart")
    assert code == 0 and "teacher" in out
    write_manifest(workdir, name="quickstart.yaml")  # the user's own file of that name wins
    code, out = _cli("validate", "-m", "quickstart")
    assert code == 0 and out.startswith("quickstart.yaml: valid"), out
