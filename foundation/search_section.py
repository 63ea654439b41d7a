"""The manifest's ``search:`` section: the candidate students ``cskd-pipeline search`` distils, the
deployment budget they must meet, and the optional successive halving over epochs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from foundation.fields import Strict


class Candidate(Strict):
    model: str = Field(
        min_length=1,
        max_length=200,
        description="a registered student (resnet8x4, wrn_16_2, ...), torchvision:NAME or "
                    "timm:NAME",
    )
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$",
        description="its name in the report (default: the model; give one when a model "
        "appears twice with other settings)",
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="student.train settings of this candidate only, e.g. {epochs: 60}",
    )

    @property
    def name(self) -> str:
        return self.label or self.model


def _named(value: object) -> object:
    """A bare name is the common case: ``resnet8`` is ``{model: resnet8}``."""
    return {"model": value} if isinstance(value, str) else value


class LatencyBudget(Strict):
    batch: int = Field(1, ge=1, le=65_536, description="the batch size the budget is for")
    max_p90_ms: float = Field(
        gt=0, le=1e6, description="p90 latency at that batch, on this machine, in ms"
    )


class Budget(Strict):
    latency: LatencyBudget
    max_size_mb: float | None = Field(
        None, gt=0, le=1e6, description="the deployed file's size at most (MB)"
    )


class Halving(Strict):
    """Successive halving on epochs (Optuna's SuccessiveHalvingPruner): every candidate trains
    ``min_epochs`` first; one in ``reduction_factor`` goes on to the next rung (epochs times the
    factor), up to ``student.train.epochs``."""

    min_epochs: int = Field(ge=1, le=100_000)
    reduction_factor: int = Field(2, ge=2, le=10)


class SearchSection(Strict):
    candidates: list[
        Annotated[Candidate, BeforeValidator(_named, json_schema_input_type=str | Candidate)]
    ] = Field(
        min_length=1,
        max_length=64,
        description="the students to compare: names, or {model, label, train} mappings",
    )
    budget: Budget
    metric: Literal["test_top1"] = Field(
        "test_top1", description="maximised: test top-1 of the deployed file"
    )
    halving: Halving | None = Field(
        None, description="stop the weaker candidates early (successive halving)"
    )
    prescreen_slack: float = Field(
        0.1,
        ge=0,
        le=10,
        description="a candidate is dropped before training when "
        "its untrained files' p90 all exceed the budget by more than this fraction",
    )

    @model_validator(mode="after")
    def _distinct(self) -> SearchSection:
        names = [c.name for c in self.candidates]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"candidate {twice[0]!r} appears twice; give each a distinct label")
        return self
