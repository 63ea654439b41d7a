"""The loss registry: each distillation loss is a config class registered with the
function that builds its training objective (torchao's handler-per-config-type pattern).

Adding a loss: a pure function of logits (``cskd/losses.py`` or anywhere), a
config class deriving from ``LossConfig`` with a ``kind: Literal["name"]`` field,
and one ``@register_loss(Config)`` on a builder ``(config, student, teacher) ->
Objective``. The manifest's ``student.loss`` accepts every registered kind, and
the test suite runs its contract, compile and gradient tests over the registry.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from cskd.config import Strict


class LossConfig(Strict):
    """Base of every loss config: ``kind`` names the loss in the manifest."""

    kind: str

    def for_pair(self, teacher: str, student: str) -> LossConfig:
        """This config with settings that depend on the teacher/student pair filled in."""
        return self


@dataclass(frozen=True)
class RegisteredLoss:
    config: type[LossConfig]
    build: Callable[[Any, nn.Module, nn.Module | None], nn.Module]
    examples: tuple[dict, ...]  # variants the test suite also runs (the default is always run)


_LOSSES: dict[str, RegisteredLoss] = {}


def _kind_of(config: type[LossConfig]) -> str:
    values = typing.get_args(config.model_fields["kind"].annotation)
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{config.__name__}.kind must be a Literal of one name, e.g. Literal['kd']")
    return values[0]


def register_loss(config: type[LossConfig], *, examples: tuple[dict, ...] = ()):
    """Decorator: register ``build(config, student, teacher) -> Objective`` for ``config``."""
    kind = _kind_of(config)

    def decorate(build):
        known = _LOSSES.get(kind)
        if known is not None and known.config.__qualname__ != config.__qualname__:
            raise TypeError(f"loss kind {kind!r} is registered twice")
        _LOSSES[kind] = RegisteredLoss(config, build, examples)
        return build

    return decorate


def registered_losses() -> dict[str, RegisteredLoss]:
    from cskd import loss_configs  # noqa: F401 - the built-in losses register on import

    return dict(_LOSSES)


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
