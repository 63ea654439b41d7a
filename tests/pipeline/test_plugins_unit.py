"""The plug-in loader in this process (test_plugins.py runs whole commands in processes of their
own): a distribution on a temp path of ``sys.path``, what it lists, what loads, and each one-line
failure. Everything a test registers is taken out again after it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from foundation import plugins
from pipeline.cli import main
from tests.conftest import write_distribution

MODULE = '''
import torch.nn as nn


def tiny_head(*, num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def wrong_head(*, num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


NOT_A_FACTORY = 3
ENGINE = "not an engine"
'''

ENTRY_POINTS = '''
[cskd_pipeline.models]
tiny_head = unit_plugin.things:tiny_head
wrong_head = unit_plugin.things:wrong_head
not_a_factory = unit_plugin.things:NOT_A_FACTORY
missing_module = unit_plugin.nowhere:net

[cskd_pipeline.losses]
silent-loss = unit_plugin.things

[cskd_pipeline.serving_engines]
not-an-engine = unit_plugin.things:ENGINE
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    write_distribution(tmp_path, "unit-plugin", "2.3", {"things": MODULE}, ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_LOADED", {})  # this test's loads only
    yield tmp_path
    from cskd.models import registry

    for name in ("tiny_head", "wrong_head"):
        registry._FACTORIES.pop(name, None)


def test_installed_lists_every_group_without_loading_anything(site):
    found = {(p.group, p.name): p for p in plugins.installed()}
    assert {("models", "tiny_head"), ("losses", "silent-loss"), ("engines", "not-an-engine")} <= set(found)
    assert found["models", "tiny_head"].distribution == "unit-plugin 2.3"
    assert found["models", "tiny_head"].location == str(site)
    assert [p.name for p in plugins.installed("losses")] == ["silent-loss"]
    assert plugins.loaded("models") == set()


def test_a_factory_entry_point_becomes_a_model_a_manifest_can_name(site):
    from cskd.models import create_model
    from stagekit.model_sections import known_model

    assert known_model("tiny_head") == "tiny_head" and plugins.loaded("models") == {"tiny_head"}
    net = create_model("tiny_head", num_classes=4, in_channels=1)
    assert isinstance(net, nn.Module) and net(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown model 'nobody_has_it'.*an installed plug-in adds"):
        known_model("nobody_has_it")


@pytest.mark.parametrize("name,needle", [
    ("missing_module", "plug-in unit-plugin 2.3: the models entry point 'missing_module' "
                       "(unit_plugin.nowhere:net) failed to load (ModuleNotFoundError"),
    ("not_a_factory", "registered no model named 'not_a_factory' and is not a factory"),
])
def test_a_model_plugin_that_cannot_serve_is_one_line_exit_3(site, name, needle):
    from stagekit.model_sections import known_model

    with pytest.raises(plugins.PluginError) as raised:
        known_model(name)
    assert needle in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.exit_code == 3


def test_a_loss_plugin_that_registers_nothing_is_named(site):
    from stagekit.model_sections import loss_config

    with pytest.raises(plugins.PluginError, match="registered no loss of kind 'silent-loss'"):
        loss_config({"kind": "silent-loss"})
    assert loss_config({"kind": "kd"}).kind == "kd"  # a built-in one never looks at plug-ins


def test_a_network_whose_head_ignores_the_classes_is_refused_naming_the_plugin(site):
    from pipeline.manifest_io import manifest_from_text
    from stagekit.model_sections import known_model
    from stagekit.models import _check_head, build_network
    from stages.distill import DistillStage
    from tests.conftest import TINY_MANIFEST

    # where every run (and every training worker) builds its network: the digits' 10 classes
    source = DistillStage.configure(manifest_from_text(TINY_MANIFEST)).data.source
    with pytest.raises(plugins.PluginError, match=r"unit-plugin 2.3: .*gives \[2, 11\] for \[2, 1, 8, 8\] images, "
                                                  r"not \[2, 10\]"):
        build_network("wrong_head", source)
    known_model("wrong_head")
    from cskd.models import create_model

    with pytest.raises(plugins.PluginError, match=r"gives \[2, 5\] for \[2, 1, 8, 8\] images, not \[2, 4\]"):
        _check_head("wrong_head", create_model("wrong_head", num_classes=4, in_channels=1), 4, (2, 1, 8, 8))
    known_model("tiny_head")
    net = create_model("tiny_head", num_classes=4, in_channels=1)
    net(torch.zeros(2, 1, 8, 8))  # its lazy layer takes 64 features from now on
    with pytest.raises(plugins.PluginError, match=r"builds a network that fails on \[2, 3, 8, 8\] images"):
        _check_head("tiny_head", net, 4, (2, 3, 8, 8))
    assert net.training  # left as it was built


def test_the_plugins_command_lists_loads_and_says_which_fail(site):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert result.exit_code == 0 and rows["tiny_head"]["entry_point_group"] == "cskd_pipeline.models"
    result = CliRunner().invoke(main, ["plugins", "--load"])
    assert result.exit_code == 3, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()}
    assert lines["tiny_head"].endswith("[ok]") and "failed to load" in lines["missing_module"]
    assert "from unit-plugin 2.3" in lines["not-an-engine"]


def test_serve_names_an_engine_plugin_that_is_not_an_engine(site, tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--engine", "not-an-engine"])
    assert result.exit_code == 3
    assert "plug-in unit-plugin 2.3: the engines entry point 'not-an-engine'" in result.output
    assert "is not a serving.engines.Engine" in result.output


def test_nothing_installed_says_where_plugins_come_from(monkeypatch):
    monkeypatch.setattr(plugins, "installed", lambda group=None: [])
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0 and "no plug-ins installed" in result.output
    assert "cskd_pipeline.models" in result.output
