"""The ``latency.serving`` section: the load test the serving stage runs. It is a part of the
latency
section (stages/latency.py) and the serving stage's config, so it lives below both."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cskd.config import Strict
from foundation.backends import FASTEST


class ServingSection(Strict):
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 32],
        min_length=1,
        max_length=8,
        description="simulated clients of each load test, one image per request",
    )
    duration_s: float = Field(
        20.0, ge=1, le=3600, description="seconds measured at each load level"
    )
    replicas: int = Field(
        1, ge=1, le=64, description="inference workers (LitServe) or replicas (Ray Serve)"
    )
    engine: Literal["litserve", "ray"] = "litserve"
    target: str = Field(
        FASTEST,
        description="the export served: 'fastest' (the quickest file within its accuracy "
        "budget at the largest latency batch, as the report names it) or a "
        "target of export.targets",
    )
    max_batch: int = Field(
        64, ge=1, le=4096, description="the largest batch dynamic batching forms (1: off)"
    )
    batch_wait_ms: float = Field(2.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _levels(self) -> ServingSection:
        if any(c < 1 or c > 10_000 for c in self.concurrency):
            raise ValueError("concurrency levels must be between 1 and 10000")
        return self
