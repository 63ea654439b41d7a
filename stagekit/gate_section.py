"""The manifest's ``gate`` section: the rules' thresholds as a user writes them (``max_drop``, the
latency and serving budgets, the champion's ``max_regression``), and the check that the
latency and serving rules judge what the ``latency`` section measures. The rules themselves are
in gate_rules.py; ``ChampionRule`` is the champion rule's part of the gate stage's config."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from cskd.config import Strict
from foundation.backends import FASTEST
from foundation.contracts import Added
from foundation.fields import Points, known_target
from foundation.manifest import Manifest
from foundation.sections import SECTIONS


def _measured_backend(name: str) -> str:
    return name if name in ("pytorch-eager", FASTEST) else known_target(name)


class LatencyRule(Strict):
    backend: Annotated[str, AfterValidator(_measured_backend)] = Field(
        FASTEST,
        description="the artifact whose p90 is judged: 'fastest' (the quickest student artifact "
                    "whose accuracy rules passed, as the report names it), pytorch-eager or an "
                    "export target",
    )
    batch: int = Field(1, ge=1, le=65_536)
    max_p90_ms: float = Field(gt=0, le=1e6)


class ServingRule(Strict):
    concurrency: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="the load level judged (default: the largest in latency.serving.concurrency)",
    )
    p99_ms: float | None = Field(
        None, gt=0, le=1e6, description="served p99 latency budget (ms) at that load"
    )
    min_throughput: float | None = Field(
        None, gt=0, le=1e9, description="served requests per second at least"
    )

    @model_validator(mode="after")
    def _something(self) -> ServingRule:
        if self.p99_ms is None and self.min_throughput is None:
            raise ValueError("give p99_ms, min_throughput or both")
        return self


class GateSection(Strict):
    max_drop: float = Field(
        ge=0, le=100, description="student top-1 >= teacher top-1 - max_drop (points)"
    )
    min_onnx_agreement: float = Field(
        99.9,
        ge=0,
        le=100,
        description="percent of test samples where ONNX and PyTorch agree on top-1",
    )
    max_class_drop: float | None = Field(
        None, ge=0, le=100, description="no class may lose more top-1 points against the teacher"
    )
    require_ci: bool = Field(
        False,
        description="the bootstrap CI's lower bound of student - teacher must clear -max_drop",
    )
    min_teacher_top1: Points | None = Field(
        None,
        description="the teacher must reach this test top-1 (default: 1.5 times chance), or it "
                    "did not learn",
    )
    min_student_top1: Points | None = Field(
        None, description="the student must reach this test top-1 (default: off)"
    )
    latency: LatencyRule | None = Field(
        None, description="p90 latency budget; needs the latency section"
    )
    serving: ServingRule | None = Added(
        description="served p99 and throughput budgets; needs latency.serving"
    )
    max_regression: Points = Field(
        0.0,
        description="top-1 points the new student's ONNX model may lose against the champion (the "
                    "model shipped/<name>/latest points at) on the same test images; "
                    "ship.promote: always drops this rule",
    )


def _measurable(manifest: Manifest) -> str | None:
    """gate.latency and gate.serving judge what the latency section measures."""
    rule, latency = manifest.gate.latency, manifest.latency
    if rule is not None:
        if latency is None:
            return "gate.latency needs a 'latency' section that measures it"
        if rule.batch not in latency.batch_sizes:
            return f"gate.latency.batch {rule.batch} is not in latency.batch_sizes"
        if (
            rule.backend not in ("pytorch-eager", FASTEST)
            and rule.backend not in manifest.export.targets
        ):
            return f"gate.latency.backend {rule.backend!r} is not in export.targets"
    serving = latency.serving if latency else None
    if manifest.gate.serving is not None:
        if serving is None:
            return "gate.serving needs a 'latency.serving' section that measures it"
        if manifest.gate.serving.concurrency not in (None, *serving.concurrency):
            return (
                f"gate.serving.concurrency {manifest.gate.serving.concurrency} is not in "
                "latency.serving.concurrency"
            )
    return None


SECTIONS.register("gate", GateSection, Field(description="the rules a student must pass to ship"),
                  check=_measurable)


class ChampionRule(Strict):
    """The champion rule's settings (ship.promote: if_not_worse)."""

    max_regression: float
    resamples: int  # the paired bootstrap, as validation draws it
    seed: int
    against: bool  # False: no champion (a first ship), or the champion is the model this plan ships
