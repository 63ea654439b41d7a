"""Typed training settings (pydantic, unknown keys forbidden); the manifest embeds them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(Strict):
    crop_padding: int = Field(
        4, ge=0, le=64, description="zero padding before the random crop, pixels"
    )
    flip: bool = Field(True, description="random horizontal flip (turn off for digits and text)")


class TrainConfig(Strict):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    nesterov: bool = False
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = Field(
        default_factory=lambda: [150, 180, 210],
        max_length=64,
        description="epochs at which the step schedule multiplies lr by gamma",
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0, le=10_000, description="linear lr warm-up")
    augment: AugmentConfig = AugmentConfig()
    drop_last: bool = Field(
        True, description="drop the last partial batch of each epoch (the authors keep it: false)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(
        1, ge=1, le=10_000, description="epochs between resumable checkpoints"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast; applies on a GPU only"
    )
    channels_last: bool = False
    cs_batch: Literal["global", "replica"] = Field(
        "global",
        description="under data parallelism: batch-wise losses over the gathered global batch, "
        "or over each replica's own batch",
    )
    engine: Literal["classic", "fast"] = Field(
        "classic",
        description="classic: the reference loop; fast: the whole step as one CUDA graph on a GPU",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones)):
            raise ValueError("milestones must be positive, strictly increasing epochs")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs must be smaller than epochs")
        return self

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``."""
        import math

        if self.warmup_epochs and epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / self.warmup_epochs
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))
        return self.lr
