"""The champion stage's plan-time part: which model is the champion, when the stage is planned,
and when it is left out as the very model this plan ships (its run evaluates the ONNX model on
the test split: tests/pipeline/test_release.py runs it in real pipelines)."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import ManifestError
from pipeline.core.files import sha256_file
from pipeline.manifest_io import manifest_from_text
from stages.champion import CHAMPION_FILE, ChampionConfig, ChampionStage, champion_of
from tests.conftest import edited


def _shipped(folder, version="v2", card=None):
    (folder / version).mkdir(parents=True)
    (folder / version / CHAMPION_FILE).write_bytes(b"onnx bytes of " + version.encode())
    (folder / version / "model_card.json").write_text(json.dumps(card or {"artifacts": {"export": "e" * 64}}))
    (folder / "latest").symlink_to(f"{version}/")
    return folder / version / CHAMPION_FILE


def test_the_champion_is_what_latest_points_at(tmp_path):
    assert champion_of(tmp_path / "nothing") is None
    model = _shipped(tmp_path / "a")
    assert champion_of(tmp_path / "a") == ("v2", model)
    model.unlink()
    with pytest.raises(ManifestError, match=r"v2/student\.onnx: the champion's model is missing; `cskd-pipeline "
                                            r"bundle verify .*v2` says what else is"):
        champion_of(tmp_path / "a")
    (tmp_path / "elsewhere.onnx").write_bytes(b"x")
    model.symlink_to(tmp_path / "elsewhere.onnx")  # a link is not the shipped file
    with pytest.raises(ManifestError, match="missing"):
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
