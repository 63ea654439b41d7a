"""Normalisation baked into the network, so an exported model takes plain pixels.

Deployed models then take float32 pixels in [0, 1], NCHW, and nobody downstream
has to remember a mean and std: a wrong normalisation is a silent accuracy loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class Preprocessed(nn.Module):
    """``net((x - mean) / std)`` with ``x`` in [0, 1]; mean/std are per channel."""

    def __init__(self, net: nn.Module, *, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
