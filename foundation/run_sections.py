"""Sections of the run as a whole, read by the pipeline itself as much as by one stage: test-split
validation, where bundles and reports go, several processes or machines, MLflow. (``validate``
stays a fixed field of the manifest: the name is a pydantic method, so it is ``validate_`` in
Python, aliased, which a plug-in key cannot be.)"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from foundation.contracts import Added
from foundation.fields import RelativePath, Strict


class ValidateSection(Strict):
    batch_size: int = Field(256, ge=1, le=65_536)
    bootstrap_resamples: int = Field(
        2000, ge=100, le=100_000, description="paired bootstrap of student - teacher"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    paper_protocol: bool | None = Added(
        description="true: also record the best test top-1 over the student's epochs, as the KD "
                    "papers' tables report it: selected on the test set, labelled so everywhere, "
                    "never read by the gate"
    )


class ShipSection(Strict):
    dir: RelativePath = Field("shipped", description="the model ships into <dir>/<manifest name>/")
    promote: Literal["if_not_worse", "always"] = Field(
        "if_not_worse",
        description="if_not_worse: a new version ships (and becomes latest) only when it is not "
        "worse than the champion (gate.max_regression); always: every passing run",
    )
    chosen_by: str | None = Added(
        max_length=2000,
        description="what chose this student (set by `cskd-pipeline "
        "search`: the search and its report); the model card "
        "says it",
    )


class DistributedSection(Strict):
    nproc: int = Field(
        1,
        ge=1,
        le=64,
        description="processes per node for the training stages (DDP; NCCL on GPUs, gloo on CPUs)",
    )
    nnodes: int = Field(
        1, ge=1, le=4096, description="machines that train together (one launcher each)"
    )
    node_rank: int = Field(
        0,
        ge=0,
        description="this machine's number, 0 to nnodes-1; node 0 hosts the rendezvous "
        "and alone commits, exports, validates and ships",
    )
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$",
        description="HOST:PORT of node 0 for torch's c10d rendezvous (nnodes > 1)",
    )

    @model_validator(mode="after")
    def _nodes(self) -> DistributedSection:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                "nnodes > 1 needs rdzv_endpoint: node 0's HOST:PORT, the same on every node"
            )
        return self


class ReportSection(Strict):
    dir: RelativePath = Field(
        "reports", description="report.json and report.html go to <dir>/<manifest name>/"
    )


class MlflowSection(Strict):
    uri: str | None = Field(
        None, max_length=4096, description="tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    experiment: str | None = Field(
        None, max_length=256, description="experiment name (default: the manifest name)"
    )


class TrackingSection(Strict):
    mlflow: MlflowSection | None = Field(
        None, description="log runs to MLflow (the [mlflow] extra)"
    )
