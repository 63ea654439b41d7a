"""One registry of model factories, keyed by the factory's name (timm's pattern)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(num_classes=..., in_channels=...)`` under its own name."""
    if fn.__name__ in _FACTORIES:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _FACTORIES[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def create_model(name: str, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered model. ``forward`` returns logits ``[B, num_classes]`` only."""
    if ":" in name:  # torchvision:<name>, timm:<name>
        from cskd.models.sources import create_external

        return create_external(name, num_classes=num_classes, in_channels=in_channels)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    return factory(num_classes=num_classes, in_channels=in_channels)
