"""The training engine's resumable checkpoint: the student's weights, the optimizer's state, the
position (epochs and steps done) and a partial epoch's sums, in one safetensors file written
atomically by rank 0; and the floating-point state whose overflow stops a diverged run."""

from __future__ import annotations

from pathlib import Path

import torch

from cskd.checkpoint import load_tensors, save_tensors
from cskd.distributed import rank, unwrap
from cskd.objectives import Objective


def save_checkpoint(
    path: Path,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    *,
    epochs_done: int,
    steps_done: int = 0,
    sums: dict[str, torch.Tensor] | None = None,
) -> None:
    if rank() != 0:  # replicas hold identical weights; one writer
        return
    tensors = {f"model.{k}": v for k, v in unwrap(objective.student).state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
    for key, value in (sums or {}).items():
        tensors[f"sums.{key}"] = value.detach().reshape(())
    save_tensors(
        tensors, path, metadata={"epochs_done": str(epochs_done), "steps_done": str(steps_done)}
    )


def load_checkpoint(
    path: Path, objective: Objective, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, int, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    unwrap(objective.student).load_state_dict(
        {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict(state)
    sums = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("sums.")}
    return int(meta["epochs_done"]), int(meta.get("steps_done", 0)), sums


def float_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point parameter and buffer (BatchNorm running statistics) by name."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return {name.removeprefix("module."): t.detach() for name, t in named if t.is_floating_point()}
