"""Weights on disk as safetensors: no pickle, so loading a file cannot run code.

``load_weights`` checks the file against the architecture and names the first
layer whose name or shape does not fit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cskd.errors import CheckpointError

# not imported to hash a file: the light commands (runs, promote, ...) start without torch
if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, *, metadata: dict[str, str] | None = None
) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(contiguous, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); weights must be saved with "
            "safetensors (pickled .pt/.pth files are refused because loading them can run code)"
        ) from None


def save_weights(
    model: nn.Module, path: str | Path, *, metadata: dict[str, str] | None = None
) -> None:
    save_tensors(model.state_dict(), path, metadata=metadata)


def load_weights(model: nn.Module, path: str | Path, *, expected_sha256: str | None = None) -> None:
    """Load a safetensors file into ``model``, strictly; name the first mismatching layer."""
    path = Path(path)
    if expected_sha256 is not None and path.is_file():
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise CheckpointError(
                f"{path}: sha256 is {actual}, the manifest declares {expected_sha256}; "
                f"fix the sha256 or the file"
            )
    tensors = load_tensors(path)
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in tensors:
            raise CheckpointError(
                f"{path}: layer {name!r} missing from the file (wrong architecture?)"
            )
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: layer {name!r} has shape {tuple(tensors[name].shape)}, "
                f"the model expects {tuple(ref.shape)} (wrong architecture or class count?)"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected layer {extra[0]!r} (wrong architecture?)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
