"""The built-in distillation losses: each config class registered with its objective.

The defaults are each method's published defaults (see the README's "Losses").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from cskd import objectives as obj
from cskd.loss_base import LossConfig, register_loss

Temperature = Annotated[float, Field(gt=0, le=1000)]
Weight = Annotated[float, Field(ge=0, le=1000)]


class CELoss(LossConfig):
    kind: Literal["ce"]


class KDLoss(LossConfig):
    kind: Literal["kd"]
    temperature: Temperature = 4.0
    ce_weight: Weight = 0.1
    kd_weight: Weight = 0.9
    standardize: bool = Field(False, description="logit standardization before KD")


# mdistiller's DKD beta per CIFAR-100 pair (configs/cifar100/dkd/*.yaml); 8 for the rest.
DKD_BETA_BY_PAIR = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet110", "resnet20"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
}
DKD_BETA_DEFAULT = 8.0


class DKDLoss(LossConfig):
    kind: Literal["dkd"]
    alpha: Weight = 1.0
    beta: Weight | None = Field(
        None,
        description="unset: mdistiller's value for the teacher/student pair "
        "(2 for resnet56/110 pairs, 6 for WRN and VGG pairs, else 8)",
    )
    temperature: Temperature = 4.0
    ce_weight: Weight = 1.0
    warmup_epochs: int = Field(20, ge=0, le=10_000)

    def for_pair(self, teacher: str, student: str) -> DKDLoss:
        if self.beta is not None:
            return self
        return self.model_copy(
            update={"beta": DKD_BETA_BY_PAIR.get((teacher, student), DKD_BETA_DEFAULT)}
        )


class DISTLoss(LossConfig):
    kind: Literal["dist"]
    tau: Temperature = 4.0
    weight: Weight = 2.0
    ce_weight: Weight = 1.0


class CSKDLoss(LossConfig):
    kind: Literal["cskd"]
    preset: Literal["core", "paper"] = Field(
        "core", description="core: CE + CS(T) + CS(CSWT); paper: the authors' full objective"
    )
    temperature: Temperature = 4.0
    alpha: Weight = 2.0
    cswt_low: Temperature = 2.0
    cswt_high: Temperature = 6.0
    ce_weight: Weight = 1.0
    kd_weight: Weight = 1.0

    @model_validator(mode="after")
    def _range(self) -> CSKDLoss:
        if self.cswt_low > self.cswt_high:
            raise ValueError("cswt_low must not exceed cswt_high")
        return self


@register_loss(CELoss)
def _ce(cfg: CELoss, student, teacher):
    return obj.CrossEntropy(student)


@register_loss(KDLoss, examples=({"standardize": True},))
def _kd(cfg: KDLoss, student, teacher):
    return obj.KD(
        student,
        teacher,
        temperature=cfg.temperature,
        ce_weight=cfg.ce_weight,
        kd_weight=cfg.kd_weight,
        standardize=cfg.standardize,
    )


@register_loss(DKDLoss)
def _dkd(cfg: DKDLoss, student, teacher):
    beta = cfg.beta if cfg.beta is not None else DKD_BETA_DEFAULT
    return obj.DKD(
        student,
        teacher,
        alpha=cfg.alpha,
        beta=beta,
        temperature=cfg.temperature,
        ce_weight=cfg.ce_weight,
        warmup_epochs=cfg.warmup_epochs,
    )


@register_loss(DISTLoss)
def _dist(cfg: DISTLoss, student, teacher):
    return obj.DIST(student, teacher, tau=cfg.tau, weight=cfg.weight, ce_weight=cfg.ce_weight)


@register_loss(CSKDLoss, examples=({"preset": "paper"},))
def _cskd(cfg: CSKDLoss, student, teacher):
    cls = obj.CSKDPaper if cfg.preset == "paper" else obj.CSKDCore
    return cls(
        student,
        teacher,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        low=cfg.cswt_low,
        high=cfg.cswt_high,
        ce_weight=cfg.ce_weight,
        kd_weight=cfg.kd_weight,
    )
