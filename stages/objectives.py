"""Manifest loss config -> training objective, dispatched on the config's type."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from cskd import objectives as obj
from pipeline.manifest import CELoss, CSKDLoss, DISTLoss, DKDLoss, KDLoss


def _cskd(cfg: CSKDLoss, student, teacher):
    cls = obj.CSKDPaper if cfg.preset == "paper" else obj.CSKDCore
    return cls(student, teacher, temperature=cfg.temperature, alpha=cfg.alpha, low=cfg.cswt_low,
               high=cfg.cswt_high, ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight)


_BUILDERS: dict[type, Callable[..., obj.Objective]] = {
    CELoss: lambda cfg, s, t: obj.CrossEntropy(s),
    KDLoss: lambda cfg, s, t: obj.KD(s, t, temperature=cfg.temperature, ce_weight=cfg.ce_weight,
                                     kd_weight=cfg.kd_weight, standardize=cfg.standardize),
    DKDLoss: lambda cfg, s, t: obj.DKD(s, t, alpha=cfg.alpha, beta=cfg.beta, temperature=cfg.temperature,
                                       ce_weight=cfg.ce_weight, warmup_epochs=cfg.warmup_epochs),
    DISTLoss: lambda cfg, s, t: obj.DIST(s, t, tau=cfg.tau, weight=cfg.weight, ce_weight=cfg.ce_weight),
    CSKDLoss: _cskd,
}


def build_objective(cfg, student: nn.Module, teacher: nn.Module) -> obj.Objective:
    return _BUILDERS[type(cfg)](cfg, student, teacher)
