"""Manifest validation: shipped manifests are valid; bad and hostile ones get one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation.errors import ManifestError
from foundation.manifest import Manifest
from pipeline.manifest_io import load_manifest, manifest_from_text
from tests.conftest import REPO, TINY_MANIFEST, edited


@pytest.mark.parametrize("path", sorted((REPO / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_are_valid(path):
    assert load_manifest(path).name


BAD = {
    "negative epochs": (edited(student__train__epochs=-1), "student.train.epochs: found -1"),
    "zero temperature": (edited(student__loss={"kind": "cskd", "temperature": 0}), "student.loss.temperature: found 0"),
    "absurd epochs": (edited(teacher__train__epochs=10**12), "teacher.train.epochs"),
    "absurd float": (edited(student__train__lr=1e308), "student.train.lr"),
    "nan": (edited(gate__max_drop=float("nan")), "gate.max_drop"),
    "unknown key": (edited(student__train__epoch=3), "student.train.epoch: unknown key 'epoch'; did you mean 'epochs'? (allowed keys: augment, batch_size"),
    "unknown loss": (edited(student__loss={"kind": "magic"}), "student.loss"),
    "unknown model": (edited(student__model="resnet9000"), "unknown model 'resnet9000'; known:"),
    "store escapes": (edited(store="../outside"), "store: found '../outside'"),
    "absolute ship dir": (edited(ship={"dir": "/etc"}), "ship.dir: found '/etc'; '/etc' is absolute"),
    "cswt range": (edited(student__loss={"kind": "cskd", "cswt_low": 6, "cswt_high": 2}), "cswt_low must not exceed"),
    "both teacher sources": (edited(teacher__checkpoint={"path": "t.safetensors", "sha256": "0" * 64}), "exactly one of"),
    "missing root": (edited(data={"name": "cifar100"}), "needs 'root'"),
    "wrong type": (edited(gate__max_drop="lots"), "gate.max_drop: found 'lots'"),
    "bad name": (edited(name="../evil"), "name: found '../evil'"),
    "bad sha": (edited(teacher={"model": "resnet8", "checkpoint": {"path": "x", "sha256": "abc"}}), "teacher.checkpoint.sha256"),
    "python tag": ("name: !!python/object/apply:os.system ['touch pwned']\n", "tags such as '!!python/object' are not allowed"),
    "alias bomb": ('a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n', "anchors ('&a') are not allowed"),
    "duplicate key": (TINY_MANIFEST + "\nname: again\n", "duplicate key 'name'"),
    "empty": ("", "the manifest is empty"),
    "only a comment": ("# nothing\n", "the manifest is empty"),
    "a list": ("- 1\n- 2\n", "must be a mapping"),
    "a scalar": ("hello\n", "must be a mapping"),
    "bad yaml": ("name: [unclosed\n", "invalid YAML"),
    "tabs": ("name:\t\tx\n\tdata: 1\n", "invalid YAML"),
    "list as key": ("? [a, b]\n: 1\n", "is not a plain string"),
    "int as key": ("1: x\n", "key 1 is not a plain string"),
    "binary tag": ("name: !!binary aGVsbG8=\n", "required field is missing"),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "YAML nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_give_one_line(case):
    text, expected = BAD[case]
    with pytest.raises(ManifestError) as info:
        manifest_from_text(text)
    message = str(info.value)
    assert expected in message and len(message.splitlines()) <= 11


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe n\x00a\x00m\x00e\x00", "not UTF-8"),
    (b"name: a\x00b\n", "NUL"),
    (b"", "empty"),
])
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=expected) as info:
        load_manifest(path)
    assert str(info.value).startswith(str(path))


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (2 << 20))
    with pytest.raises(ManifestError, match="at most"):
        load_manifest(big)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
_trees = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.text(max_size=12), kids, max_size=4)),
                      max_leaves=20)
_sections = ("name", "store", "data", "teacher", "student", "export", "validate", "gate", "ship")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_sections), _trees, max_size=9))
def test_any_mapping_is_valid_or_one_line_error(data):
    try:
        manifest_from_text(yaml.safe_dump(data))
    except ManifestError as exc:
        _one_line_per_problem(str(exc))


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "epochs": st.integers(-5, 20_000), "lr": st.floats(-1, 20), "batch_size": st.integers(-2, 100_000),
    "momentum": st.floats(-1, 2), "milestones": st.lists(st.integers(-3, 300), max_size=4)}))
def test_train_section_bounds(train):
    data = yaml.safe_load(TINY_MANIFEST)
    data["student"]["train"] = {**data["student"]["train"], **train}
    try:
        m = manifest_from_text(yaml.safe_dump(data))
    except ManifestError as exc:
        assert "student.train" in str(exc)
    else:
        t = m.student.train
        assert 1 <= t.epochs <= 10_000 and 0 < t.lr <= 10 and t.batch_size >= 1 and 0 <= t.momentum < 1


def test_tiny_manifest_is_valid():
    m = manifest_from_text(TINY_MANIFEST)
    assert m.student.loss.kind == "cskd" and m.validate_.batch_size == 256


def test_the_schema_is_assembled_from_the_registries_and_checks_what_validation_checks():
    """``cskd-pipeline schema`` for editors: every export key a back-end registered and every loss
    kind with its settings (pydantic alone sees only the loss base class, with just ``kind``).
    A JSON-schema validator accepts the project's manifests and refuses what the manifest refuses."""
    import jsonschema

    from cskd.loss_registry import registered_losses
    from foundation.sections import EXPORT_SETTINGS
    from pipeline.schema import manifest_schema

    schema = manifest_schema()
    assert {"data", "teacher", "student", "gate", "validate"} <= set(schema["properties"])
    export = schema["$defs"]["ExportSection"]["properties"]
    assert set(export) == {"targets", *EXPORT_SETTINGS.model().model_fields} >= {"targets", "int8", "trt", "opset"}
    kinds = {schema["$defs"][ref["$ref"].split("/")[-1]]["properties"]["kind"]["const"]
             for ref in schema["$defs"]["StudentSection"]["properties"]["loss"]["oneOf"]}
    assert kinds == set(registered_losses())

    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((Path(REPO) / "manifests").glob("*.yaml")):
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path.name
    good = yaml.safe_load(TINY_MANIFEST)
    for edit in ({"export": {"int8": {"max_drop": -1}}}, {"export": {"no_such_key": 1}},
                 {"student": {**good["student"], "loss": {"kind": "cskd", "temperature": -4}}}):
        assert list(validator.iter_errors({**good, **edit})), edit
        with pytest.raises(ValueError):  # pydantic's ValidationError
            Manifest.model_validate({**good, **edit})


def test_manifest_dir_has_quickstart():
    assert (Path(REPO) / "manifests" / "quickstart.yaml").is_file()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.sampled_from(["a: [", "? [x]\n: 1", "!!set {a}", "a: *b", "- - - -", "a: {b: {c: "])
       .flatmap(lambda seed: st.just(seed) | st.text(alphabet=":-[]{}!&*?|>'\"#%@ \n\tab1", max_size=60)))
def test_arbitrary_text_is_valid_or_one_line_error(text):
    """Whatever the text, the loader answers with a manifest or a ManifestError, never a crash."""
    try:
        manifest_from_text(text)
    except ManifestError as exc:
        _one_line_per_problem(str(exc))


def _one_line_per_problem(message: str) -> None:
    lines = message.splitlines()
    assert 1 <= len(lines) <= 11 and all(line.strip() for line in lines)


def test_a_misspelt_key_is_named_with_a_suggestion_and_every_problem_listed(tmp_path):
    # The user's typo: `epoch: 15` under teacher.train, plus an unrelated second problem.
    text = TINY_MANIFEST.replace("teacher:\n  model: resnet8\n  train: {epochs: 2,",
                                 "teacher:\n  model: resnet8\n  train: {epoch: 15,").replace("max_drop: 100.0", "max_drop: -1")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    lines = str(info.value).splitlines()
    row = next(i for i, line in enumerate(text.splitlines(), 1) if "{epoch: 15" in line)
    column = text.splitlines()[row - 1].index("epoch") + 1
    assert lines[0] == (f"{path}:{row}:{column}: teacher.train.epoch: unknown key 'epoch'; did you mean 'epochs'? "
                        f"(allowed keys: " + lines[0].split("(allowed keys: ")[1])
    assert not any("required field is missing" in line for line in lines)  # the typo says it: one line
    assert any("gate.max_drop: found -1" in line for line in lines) and len(lines) == 2
    assert all(line.startswith(f"{path}:") for line in lines)


def test_yaml_errors_give_line_and_column():
    with pytest.raises(ManifestError, match=r"line 2, column 17: invalid YAML"):
        manifest_from_text("name: a\nteacher: {a: 1 b: 2}\n")


def test_sample_limits_take_a_seeded_subset_of_every_class_and_leave_other_ids_alone():
    """An image folder is read in class order: the first N training images would be one or
    two classes. A limit takes a seeded random subset instead; without a limit the data
    view's id data is what it was before the subset field existed."""
    from cskd.data.datasets import Split
    from foundation.contracts import recipe
    from stagekit.data import _limited
    from stagekit.data_section import DataSection

    plain = DataSection(name="digits")
    assert "subset" not in recipe(plain.train_view()) and "subset" not in recipe(plain.test_view())
    limited = DataSection(name="digits", max_train_samples=100, max_test_samples=50)
    assert recipe(limited.train_view())["subset"] == "random" and recipe(limited.test_view())["subset"] == "random"
    by_class = Split(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), torch.arange(10).repeat_interleave(100))
    picked = _limited(by_class, 100, "random", 0)
    assert len(picked) == 100 and set(picked.labels.tolist()) == set(range(10))
    assert torch.equal(picked.labels, _limited(by_class, 100, "random", 0).labels)  # seeded
    assert set(_limited(by_class, 100, None, None).labels.tolist()) == {0}  # the old first-N meaning


def test_a_misspelt_key_is_one_line_not_also_a_missing_one(workdir):
    text = TINY_MANIFEST.replace("epochs: 2", "epoch: 2").replace("max_drop: 100.0", "max_dorp: 100.0")
    path = workdir / "typos.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines  # teacher.train.epoch, student.train.epoch, gate.max_dorp: one line each
    assert all("did you mean" in line and line.startswith(f"{path}:") for line in lines)
    assert not any("required field is missing" in line for line in lines)


def test_a_bad_override_is_blamed_by_name_not_the_file(workdir):
    path = workdir / "tiny.yaml"
    path.write_text(TINY_MANIFEST)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, ["student.train.lr=-1", "teacher.train.epochs=1"])
    (line,) = str(err.value).splitlines()
    assert line.startswith("-o student.train.lr=-1: student.train.lr: found -1") and str(path) not in line


def test_a_schema_error_points_at_its_line_and_column(workdir):
    """file:line:column, as compilers print it: the unknown key itself, the bad value, or for a
    missing key the mapping that should hold it."""
    text = ("name: tiny\n"
            "data: {name: digits}\n"
            "teacher:\n"
            "  model: resnet8\n"
            "  train:\n"
            "    epochs: 0\n"              # line 6, the value at column 13
            "student:\n"
            "  model: resnet8\n"
            "  train: {epochs: 2}\n"
            "  wrong_key: 3\n"             # line 10, the key at column 3
            "gate: {min_onnx_agreement: 99.0}\n")  # line 11: max_drop missing in this mapping (column 7)
    path = workdir / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    lines = str(err.value).splitlines()
    assert f"{path}:10:3: student.wrong_key: unknown key 'wrong_key'" in lines[0]
    assert any(line.startswith(f"{path}:6:13: teacher.train.epochs: found 0") for line in lines), lines
    assert any(line.startswith(f"{path}:11:7: gate.max_drop: required field is missing") for line in lines), lines


def test_setting_a_loss_kind_on_the_command_line_starts_from_that_losss_defaults(workdir):
    """``-o student.loss.kind=kd`` on a manifest whose loss is ``{kind: cskd, preset: core}``: a KD
    loss with KD's defaults (the preset means nothing to KD), and later overrides apply on top."""
    from cskd.loss_configs import KDLoss

    path = workdir / "tiny.yaml"
    path.write_text(TINY_MANIFEST)
    loss = load_manifest(path, ["student.loss.kind=kd"]).student.loss
    assert isinstance(loss, KDLoss) and loss == KDLoss(kind="kd")
    tuned = load_manifest(path, ["student.loss.kind=kd", "student.loss.temperature=2"]).student.loss
    assert isinstance(tuned, KDLoss) and tuned.temperature == 2
    # the same kind again keeps the section's settings
    assert load_manifest(path, ["student.loss.kind=cskd"]).student.loss.preset == "core"


@pytest.mark.parametrize("overrides, suggestion, allowed", [
    (["student.loss.temprature=4"], "temperature", "alpha, ce_weight, cswt_high, cswt_low, kd_weight, kind, preset, "
                                                   "temperature"),
    (["student.loss.kind=kd", "student.loss.standardise=true"], "standardize",
     "ce_weight, kd_weight, kind, standardize, temperature"),
])
def test_a_misspelt_loss_key_is_one_line_with_the_keys_of_that_loss(workdir, overrides, suggestion, allowed):
    path = workdir / "tiny.yaml"
    path.write_text(TINY_MANIFEST)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, overrides)
    (line,) = str(err.value).splitlines()
    key = overrides[-1].partition("=")[0].rpartition(".")[2]
    assert line == (f"-o {overrides[-1]}: student.loss.{key}: unknown key {key!r}; did you mean {suggestion!r}? "
                    f"(allowed keys: {allowed})")


def test_a_misspelt_loss_key_in_the_file_names_its_line_and_suggests(workdir):
    path = workdir / "tiny.yaml"
    path.write_text(TINY_MANIFEST.replace("loss: {kind: cskd, preset: core}", "loss: {kind: cskd, prest: core}"))
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    (line,) = str(err.value).splitlines()
    assert line.startswith(f"{path}:") and "student.loss.prest: unknown key 'prest'; did you mean 'preset'?" in line


@pytest.mark.slow  # a whole run of the tiny manifest (about 40 s)
def test_a_kd_student_is_distilled_when_the_command_line_sets_the_loss_kind(workdir):
    """What the user typed runs: the distilled student's recorded loss is KD with KD's defaults."""
    import json

    from click.testing import CliRunner

    from pipeline.cli import main

    (workdir / "tiny.yaml").write_text(TINY_MANIFEST)
    result = CliRunner().invoke(main, ["run", "-m", "tiny.yaml", "--quiet",
                                       "-o", "student.loss.kind=kd"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in (workdir / ".cskd" / "artifacts" / "distill").glob("*/artifact.json")]
    assert record["config"]["loss"] == {"kind": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9,
                                        "standardize": False}
