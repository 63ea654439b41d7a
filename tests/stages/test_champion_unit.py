"""The champion stage's plan-time part: which model is the champion, when the stage is planned,
and when it is left out as the very model this plan ships (its run evaluates the ONNX model on
the test split: tests/pipeline/test_release.py runs it in real pipelines)."""

from __future__ import annotations

import json

import pytest

from foundation.bundle_seal import seal_bundle
from foundation.errors import StoreError
from foundation.files import sha256_file
from pipeline.manifest_io import manifest_from_text
from stagekit.champion_file import CHAMPION_FILE, ChampionConfig, champion_of
from stages.champion import ChampionStage
from tests.conftest import edited


def _shipped(folder, version="v2", card=None):
    """A sealed bundle as the ship step leaves it: the model, its card listing it, SHA256SUMS."""
    (folder / version).mkdir(parents=True)
    model = folder / version / CHAMPION_FILE
    model.write_bytes(b"onnx bytes of " + version.encode())
    card = {"artifacts": {"export": "e" * 64}, **(card or {}), "files": {CHAMPION_FILE: sha256_file(model)}}
    (folder / version / "model_card.json").write_text(json.dumps(card))
    seal_bundle(folder / version)
    (folder / "latest").symlink_to(f"{version}/")
    return model


def test_the_champion_is_what_latest_points_at_and_it_must_verify(tmp_path):
    assert champion_of(tmp_path / "nothing") is None
    model = _shipped(tmp_path / "a")
    assert champion_of(tmp_path / "a") == ("v2", model)
    model.write_bytes(b"a weaker model's bytes")  # tampered: the new student must not be held to it
    with pytest.raises(StoreError, match=r"^champion v2: .*v2/student\.onnx: changed since it shipped .*nothing "
                                         r"ships while latest fails its seal") as failed:
        champion_of(tmp_path / "a")
    assert failed.value.exit_code == 4
    model.unlink()
    with pytest.raises(StoreError, match=r"v2/student\.onnx: missing from the bundle"):
        champion_of(tmp_path / "a")
    (tmp_path / "elsewhere.onnx").write_bytes(b"onnx bytes of v2")
    model.symlink_to(tmp_path / "elsewhere.onnx")  # a link is not the shipped file, even to the same bytes
    with pytest.raises(StoreError, match="missing"):
        champion_of(tmp_path / "a")


def test_the_stage_is_planned_only_against_a_shipped_champion(workdir):
    manifest = manifest_from_text(edited())
    assert ChampionStage.configure(manifest) is None  # the first ship of this name
    model = _shipped(workdir / "shipped" / "tiny")
    config = ChampionStage.configure(manifest)
    assert (config.sha256, config.path, config.version) == (sha256_file(model), "shipped/tiny/v2/student.onnx", "v2")
    assert config.data == manifest.data.test_view()
    assert ChampionStage.configure(manifest_from_text(edited(ship={"dir": "shipped", "promote": "always"}))) is None
    assert ChampionStage().inputs(config) == ()


def test_the_very_model_this_plan_ships_is_not_its_own_champion(tmp_path):
    model = _shipped(tmp_path / "a")
    config = ChampionConfig(sha256=sha256_file(model), path=str(model), version="v2",
                            data=manifest_from_text(edited()).data.test_view())
    stage = ChampionStage()
    assert stage.redundant(config, {"export": "e" * 64}) is True
    assert stage.redundant(config, {"export": "f" * 64}) is False
    assert stage.redundant(config, {}) is False
    (model.parent / "model_card.json").write_text("{broken")
    assert stage.redundant(config, {"export": "e" * 64}) is False  # unreadable: compare with the file as it is
    (model.parent / "model_card.json").write_text(json.dumps({"artifacts": None}))
    assert stage.redundant(config, {"export": "e" * 64}) is False
