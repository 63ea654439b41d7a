"""The loss registry's base: ``LossConfig`` and ``@register_loss``. The built-in losses
(``loss_configs``) register through it; ``loss_registry`` reads the registry with them in it.
Split so that neither imports the other back."""

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
    """Every registered loss by kind (``cskd.loss_registry`` imports the built-in ones first)."""
    return dict(_LOSSES)


def unregister_loss(kind: str) -> None:
    """Remove a loss (a test's own, when the test ends)."""
    _LOSSES.pop(kind, None)
