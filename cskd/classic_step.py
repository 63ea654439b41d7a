"""The classic engine's training step, the reference every faster step is checked against: eager
forward (bf16 autocast on a GPU when asked), backward, ``torch.optim.SGD.step``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cskd.config import TrainConfig
from cskd.objectives import Objective


def classic_step(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    config: TrainConfig,
) -> Callable[..., dict[str, torch.Tensor]]:
    """The reference step: eager forward, backward, ``torch.optim.SGD.step``."""
    autocast = torch.autocast(
        device.type,
        dtype=torch.bfloat16,
        enabled=config.precision == "bf16" and device.type == "cuda",
    )

    epochs: dict[int, torch.Tensor] = {}  # one device tensor per epoch, not a host copy per step

    def step(weak, labels, strong, *, lr: float, epoch: int) -> dict[str, torch.Tensor]:
        if epoch not in epochs:
            epochs.clear()
            epochs[epoch] = torch.tensor(float(epoch), device=device)
        with autocast:
            out = objective(weak, labels, strong=strong, epoch=epochs[epoch])
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return {k: v.detach().float() for k, v in out.items() if k != "output"}

    return step
