"""Plug-ins (``foundation/plugins.py``): a distribution installed beside the pipeline adds a
model, a loss and an export back-end through entry points, and the quickstart runs with all three
from a folder outside the repository. The distribution is real as far as ``importlib.metadata``
knows: a package and its ``.dist-info`` (METADATA, entry_points.txt) on a path of its own, as pip
would leave them. Each run is a process of its own: loaded plug-ins stay in their registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_distribution

MODELS = '''
import torch.nn as nn


def acme_net(*, num_classes: int, in_channels: int) -> nn.Module:
    """A small convolutional network: the factory is the entry point's object."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

'''

LOSSES = '''
from typing import Literal

import torch.nn.functional as F

from cskd.loss_base import LossConfig, register_loss
from cskd.objectives import Objective


class AcmeL1(LossConfig):
    kind: Literal["acme-l1"]
    weight: float = 0.5


class _L1(Objective):
    def __init__(self, student, teacher, *, weight):
        super().__init__(student, teacher)
        self.weight = weight

    def forward(self, images, labels, *, strong=None, epoch=None):
        zs = self.student(images)
        ce, l1 = F.cross_entropy(zs, labels), self.weight * (zs.float() - self.teacher_logits(images)).abs().mean()
        return {"loss": ce + l1, "output": zs, "ce": ce, "l1": l1}


@register_loss(AcmeL1)
def _build(config, student, teacher):
    return _L1(student, teacher, weight=config.weight)
'''

BACKENDS = '''
import numpy as np
from pydantic import Field

from cskd.config import Strict
from foundation.backends import Backend, register_backend
from foundation.contracts import Stage, StageResult
from foundation.sections import EXPORT_SETTINGS
from stagekit.onnx_files import ONNX_FILE, onnx_loader


class RoundedSection(Strict):
    decimals: int = Field(3, ge=0, le=8, description="decimals the weights keep")
    max_drop: float = Field(1.0, ge=0, le=100, description="top-1 points it may lose against FP32")


class RoundedConfig(Strict):
    decimals: int


class AcmeRoundedStage(Stage):
    kind, version, Config, requires = "acme_rounded", 1, RoundedConfig, ("export",)

    @classmethod
    def configure(cls, manifest):
        if "acme-rounded" not in manifest.export.targets:
            return None
        return RoundedConfig(decimals=manifest.export.acme_rounded.decimals)

    def run(self, config, ctx):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(ctx.inputs["export"].file(ONNX_FILE))
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype == np.float32:
                tensor.CopyFrom(numpy_helper.from_array(values.round(config.decimals), tensor.name))
        onnx.save(model, ctx.out_dir / "rounded.onnx")
        return StageResult({"decimals": config.decimals}, f"weights rounded to {config.decimals} decimals",
                           extra={"input": ctx.inputs["export"].record["input"]})


EXPORT_SETTINGS.register("acme_rounded", RoundedSection, Field(RoundedSection(), description="acme-rounded"))
register_backend(Backend("acme-rounded", kind="acme_rounded", file="rounded.onnx",
                         load=onnx_loader("acme_rounded", "rounded.onnx"),
                         budget=lambda export: export.acme_rounded.max_drop, requires=lambda export: ("onnx",),
                         shipped={"student_rounded.onnx": "rounded.onnx"}, description="ONNX, weights rounded"))
'''

ENGINE = '''
import json
from pathlib import Path

from serving.engines import Engine


def _serve(options):  # records what it was asked to serve, instead of serving it
    Path("served.json").write_text(json.dumps({"target": options.target, "model": options.model_name,
                                               "files": options.files}))


ENGINE = Engine(_serve, lambda: None)
'''

ENTRY_POINTS = '''
[cskd_pipeline.models]
acme_net = acme_plugin.models:acme_net
broken_net = acme_plugin.no_such_module:net

[cskd_pipeline.losses]
acme-l1 = acme_plugin.losses

[cskd_pipeline.backends]
acme-rounded = acme_plugin.backends

[cskd_pipeline.stages]
acme_rounded = acme_plugin.backends:AcmeRoundedStage

[cskd_pipeline.serving_engines]
acme-echo = acme_plugin.engine:ENGINE
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The installed distribution ``acme-plugin 1.0``: its package and its dist-info."""
    return write_distribution(tmp_path_factory.mktemp("site"), "acme-plugin", "1.0",
                              {"models": MODELS, "losses": LOSSES, "backends": BACKENDS, "engine": ENGINE},
                              ENTRY_POINTS)


def _cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


QUICK = ["-o", "teacher.model=resnet8", "-o", "teacher.train.epochs=1", "-o", "student.train.epochs=1",
         "-o", "latency=null", "-o", "gate.max_drop=100", "-o", "gate.min_onnx_agreement=0"]


def test_a_plugin_adds_a_model_a_loss_and_a_backend_and_the_quickstart_runs_with_all_three(site, tmp_path):
    work = tmp_path / "elsewhere"  # an empty folder outside the repository: -m quickstart is the packaged one
    work.mkdir()
    listed = _cli(site, work, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {(r["group"], r["name"]): r for r in json.loads(listed.stdout)}
    assert {("models", "acme_net"), ("losses", "acme-l1"), ("backends", "acme-rounded")} <= set(rows)
    assert rows["models", "acme_net"]["distribution"] == "acme-plugin 1.0"
    assert rows["models", "acme_net"]["location"] == str(site)

    result = _cli(site, work, "run", "-m", "quickstart", "-q", *QUICK, "-o", "student.model=acme_net",
                  "-o", "student.loss={kind: acme-l1, weight: 0.25}", "-o", "export.targets=[onnx, acme-rounded]")
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = work / "shipped" / "quickstart" / "latest"
    card = json.loads((bundle / "model_card.json").read_text())
    assert "student_rounded.onnx" in card["files"] and (bundle / "student_rounded.onnx").is_file()
    (distill,) = (work / ".cskd" / "artifacts" / "distill").iterdir()
    record = json.loads((distill / "artifact.json").read_text())
    assert record["config"]["model"] == "acme_net" and record["config"]["loss"] == {"kind": "acme-l1", "weight": 0.25}
    assert record["metrics"]["normalization"]["mean"]  # recorded as for a built-in model
    report = json.loads((work / "reports" / "quickstart" / "latest" / "report.json").read_text())
    assert "acme-rounded" in report["metrics"]["exports"]
    assert any(r.get("target") == "acme-rounded" for r in report["gate"]["rules"])

    served = _cli(site, work, "serve", "quickstart", "--engine", "acme-echo", "--target", "acme-rounded")
    assert served.returncode == 0, served.stderr
    assert json.loads((work / "served.json").read_text()) == {"target": "acme-rounded", "model": "quickstart",
                                                               "files": ["student_rounded.onnx"]}


# A network whose head ignores the classes is refused where runs build networks: test_plugins_unit.py,
# in this process.
@pytest.mark.parametrize("model,needle", [
    ("broken_net", "failed to load (ModuleNotFoundError: No module named 'acme_plugin.no_such_module')"),
])
def test_a_plugin_that_fails_is_one_line_naming_its_distribution(site, tmp_path, model, needle):
    result = _cli(site, tmp_path, "run", "-m", "quickstart", "-q", *QUICK, "-o", f"student.model={model}",
                  "-o", "export.targets=[onnx]")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "plug-in acme-plugin 1.0:" in result.stderr and needle in result.stderr, result.stderr
    assert not (tmp_path / "shipped").exists()


def test_an_engine_no_plugin_adds_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--engine", "nosuch"])
    assert result.exit_code == 2 and result.output.strip().endswith("--engine nosuch: not one of litserve, ray")


def test_without_the_plugin_the_names_are_unknown(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", "-m", "quickstart",
                             "-o", "student.model=acme_net"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown model 'acme_net'" in result.stderr, result.stderr
