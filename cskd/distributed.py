"""Data-parallel training with torch.distributed: this process's place in the group, the student
wrapped in DDP (SyncBatchNorm on GPUs), the global batch gathered for the batch-wise CS-KD
losses, and rank 0's buffers broadcast so every replica holds the same model."""

from __future__ import annotations

import torch

from cskd.config import TrainConfig
from cskd.objectives import Objective


def world_size() -> int:
    """Processes in the current process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group; rank 0 writes files)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (the elastic launcher sets LOCAL_RANK)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 else 0


def sync_buffers(module: torch.nn.Module) -> None:
    """Every replica takes rank 0's buffers (BatchNorm running statistics, which each replica
    updates from its own slice on CPUs): the model evaluated, and saved on any node, is rank 0's."""
    import torch.distributed as dist

    for buffer in unwrap(module).buffers():
        dist.broadcast(buffer, src=0)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return (
        module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    )


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All replicas' rows, in rank order, with gradient flowing back to each replica's own rows."""
    import warnings

    from torch.distributed.nn.functional import all_gather

    # deprecated in favour of a private API; still the public autograd gather
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(tensor), dim=0)


def data_parallel(
    objective: Objective, config: TrainConfig, device: torch.device
) -> torch.nn.Module:
    """Wrap the student in DDP when a process group is up; returns the plain student."""
    net = objective.student
    if world_size() == 1:
        return net
    if config.engine == "fast":
        raise ValueError(
            "engine: fast runs in one process (one CUDA graph); use engine: classic with several "
            "processes"
        )
    if config.batch_size % world_size():
        raise ValueError(
            f"train.batch_size {config.batch_size} is not divisible by {world_size()} processes"
        )
    if device.type == "cuda":  # global batch statistics, as one process would compute them
        net = objective.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    objective.student = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
    if config.cs_batch == "global":
        objective.gather = gather_rows
    return net
