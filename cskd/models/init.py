"""Start training from weights saved elsewhere: torchvision's and timm's ``state_dict`` files
(``torch.save``, read with ``weights_only=True`` so a file cannot run code) or safetensors.

A classifier head whose class count differs from the data set's is left freshly
initialised (fine-tuning a 1,000-class ImageNet model on 3 classes); any other mismatch
is an error naming the layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cskd.errors import CheckpointError
from cskd.models.sources import classifier_parameters

FORMATS = ("auto", "torchvision", "timm", "safetensors")


def read_state_dict(path: str | Path, fmt: str = "auto") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if fmt == "safetensors" or (fmt in ("auto", "timm") and path.suffix == ".safetensors"):
        from cskd.checkpoint import load_tensors

        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, a refused global, a truncated zip
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a state dict torch.load can read safely ({reason}); save it with "
            f"torch.save(model.state_dict(), path) or as safetensors"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_initial_weights(
    net: nn.Module, path: str | Path, *, fmt: str, num_classes: int, allow_new_head: bool = True
) -> list[str]:
    """Load ``path`` into ``net``; returns the classifier parameters left re-initialised."""
    state = read_state_dict(path, fmt)
    own = net.state_dict()
    head = classifier_parameters(net, num_classes) if allow_new_head else set()
    reinitialised = []
    for name, value in state.items():
        if name not in own:
            raise CheckpointError(
                f"{path}: layer {name!r} is not in the model (wrong architecture?)"
            )
        if tuple(value.shape) != tuple(own[name].shape):
            if name in head:
                reinitialised.append(name)
                continue
            raise CheckpointError(
                f"{path}: layer {name!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[name].shape)} (wrong architecture or class count?)"
            )
    missing = [n for n in own if n not in state and not n.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"{path}: layer {missing[0]!r} is missing from the file (wrong architecture?)"
        )
    keep = set(reinitialised)
    net.load_state_dict(
        {k: v.to(own[k].dtype) for k, v in state.items() if k not in keep}, strict=False
    )
    return sorted(reinitialised)
