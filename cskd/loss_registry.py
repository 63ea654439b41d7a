"""The loss registry: each distillation loss is a config class registered with the
function that builds its training objective (torchao's handler-per-config-type pattern).

Adding a loss: a pure function of logits (``cskd/losses.py`` or anywhere), a
config class deriving from ``LossConfig`` with a ``kind: Literal["name"]`` field,
and one ``@register_loss(Config)`` on a builder ``(config, student, teacher) ->
Objective``. The manifest's ``student.loss`` accepts every registered kind, and
the test suite runs its contract, compile and gradient tests over the registry.
"""

from __future__ import annotations

import torch.nn as nn

from cskd import loss_configs  # noqa: F401 - the built-in losses register on import
from cskd.loss_base import (  # noqa: F401 - re-exported
    LossConfig,
    RegisteredLoss,
    register_loss,
    registered_losses,
    unregister_loss,
)

# The named losses (a loss with its default settings): what `study --losses` and QAD's
# `export.int8.qad.loss` take. One place, so the two never spell a preset differently.
LOSS_PRESETS: dict[str, dict] = {
    "ce": {"kind": "ce"},
    "kd": {"kind": "kd"},
    "dkd": {"kind": "dkd"},
    "dist": {"kind": "dist"},
    "cskd-core": {"kind": "cskd", "preset": "core"},
    "cskd-paper": {"kind": "cskd", "preset": "paper"},
}


def parse_loss(value: object) -> LossConfig:
    """A loss config from manifest data ``{kind: ..., ...}`` (or an already built config)."""
    losses = registered_losses()
    if isinstance(value, LossConfig):
        if value.kind not in losses or not isinstance(value, losses[value.kind].config):
            raise ValueError(f"loss config {type(value).__name__} is not registered")
        return value
    if not isinstance(value, dict) or "kind" not in value:
        raise ValueError(f"a loss is a mapping with 'kind' (one of {', '.join(sorted(losses))})")
    kind = value["kind"]
    if kind not in losses:
        raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(sorted(losses))}")
    return losses[kind].config.model_validate(value)


def build_objective(config: LossConfig, student: nn.Module, teacher: nn.Module | None) -> nn.Module:
    """The training objective for ``config``: ``forward`` returns ``{loss, output, <terms>}``."""
    return registered_losses()[config.kind].build(config, student, teacher)
