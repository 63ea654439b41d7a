"""The classic training engine: one loop for teachers and students, any objective.

Per-epoch metrics (every loss term, val top-1, lr) go to a JSON-lines file.
Checkpoints (weights, optimizer state, position, partial epoch sums) are written
atomically every ``checkpoint_every`` epochs, and at the step boundary where a
SIGINT or SIGTERM arrives. Each epoch's randomness is seeded by ``(seed, epoch)``
and a mid-epoch resume replays the epoch's draws up to its step, so a resumed
run reaches the same weights as an uninterrupted one, bit for bit on the CPU.
The final model is the last epoch's; val top-1 is for monitoring only and never
reads the test split.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from cskd.classic_step import classic_step
from cskd.config import TrainConfig
from cskd.data.loader import DeviceLoader
from cskd.data.split import Split
from cskd.data.stream_loader import StreamLoader
from cskd.distributed import (
    data_parallel,
    local_rank,
    rank,
    sync_buffers,
    unwrap,
    world_size,
)
from cskd.engine_checkpoint import float_state, load_checkpoint, save_checkpoint
from cskd.errors import NumericalError
from cskd.evaluate import predict_logits, top1
from cskd.fast_engine import FastStep
from cskd.interrupts import Interrupted, signal_hook, stop_requests
from cskd.objectives import Objective
from cskd.progress import epoch_steps

_CKPT = "checkpoint.safetensors"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    objective: Objective,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    *,
    work_dir: Path,
    metrics_path: Path,
    progress=True,
    on_epoch: Callable[[dict], None] | None = None,
    label: str = "training",
    monitor: Split | None = None,
) -> dict:
    """Train ``objective.student`` in place; returns the last epoch's metrics.

    ``monitor``: a split evaluated after every epoch as ``monitor_top1`` (the paper protocol's
    test split: recorded, never used to choose anything here).

    ``work_dir`` holds the resumable checkpoint and the metrics history; a checkpoint
    found there is resumed. The history is copied to ``metrics_path`` at the end.
    Raises ``Interrupted`` (after checkpointing) on SIGINT/SIGTERM.
    """
    device = resolve_device(config.device)
    if device.type == "cuda" and world_size() > 1:
        device = torch.device("cuda", rank() % torch.cuda.device_count())
    objective.to(device)
    if config.channels_last:
        objective.to(memory_format=torch.channels_last)
    net = data_parallel(objective, config, device)
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    # Image folders larger than memory stream from disk (FileSplit); the rest live on the device.
    loader_class = DeviceLoader if isinstance(train_split, Split) else StreamLoader
    loader = loader_class(
        train_split,
        batch_size=config.batch_size,
        device=device,
        shuffle=True,
        drop_last=config.drop_last,
        crop_padding=config.augment.crop_padding,
        flip=config.augment.flip,
        strong=objective.needs_strong_view,
        seed=config.seed,
        shard=(rank(), world_size()),
    )
    try:
        return _train_loop(
            objective,
            optimizer,
            loader,
            train_split,
            val_split,
            config,
            device=device,
            work_dir=work_dir,
            metrics_path=metrics_path,
            progress=progress,
            on_epoch=on_epoch,
            label=label,
            monitor=monitor,
        )
    finally:
        objective.student, objective.gather = net, None
        net.to("cpu").eval()
        if config.channels_last:
            net.to(memory_format=torch.contiguous_format)


def _train_loop(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    loader: DeviceLoader,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    *,
    device: torch.device,
    work_dir: Path,
    metrics_path: Path,
    progress,
    on_epoch: Callable[[dict], None] | None,
    label: str,
    monitor: Split | None = None,
) -> dict:
    writer = rank() == 0

    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / _CKPT
    history = work_dir / "metrics.jsonl"
    start, skip, sums = (
        load_checkpoint(ckpt, objective, optimizer, device) if ckpt.is_file() else (0, 0, {})
    )
    # Keep the lines of the epochs the checkpoint covers; later ones are recomputed.
    history_lines = history.read_text().splitlines()[:start] if history.is_file() else []
    if writer:
        history.write_text("".join(line + "\n" for line in history_lines))
    last: dict = json.loads(history_lines[-1]) if history_lines else {}

    step = classic_step(objective, optimizer, device, config)
    if config.engine == "fast":
        step = FastStep(objective, optimizer, device=device, bf16=config.precision == "bf16")
    with stop_requests() as stop:
        for epoch in range(start, config.epochs):
            terms = _train_epoch(
                objective,
                optimizer,
                loader,
                config,
                step,
                epoch=epoch,
                device=device,
                skip=skip,
                sums=sums,
                stop=stop,
                ckpt=ckpt,
                progress=progress,
                label=label,
            )
            skip, sums = 0, {}
            if world_size() > 1:
                sync_buffers(objective.student)
            val_top1 = (
                top1(
                    predict_logits(unwrap(objective.student), val_split, device=device),
                    # val_fraction 0: no val split
                    val_split.labels,
                )
                if len(val_split)
                else None
            )
            last = {"epoch": epoch + 1, "lr": config.lr_at(epoch), **terms, "val_top1": val_top1}
            if monitor is not None:
                last["monitor_top1"] = top1(
                    predict_logits(unwrap(objective.student), monitor, device=device),
                    monitor.labels,
                )
            if writer:
                with open(history, "a") as f:
                    f.write(json.dumps(last) + "\n")
            if on_epoch is not None:
                on_epoch(last)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                save_checkpoint(ckpt, objective, optimizer, epochs_done=epoch + 1)
            if stop:
                raise Interrupted(stop[0], f"the end of epoch {epoch + 1}")
    # rank 0 wrote the last line; each node's first worker copies it into its out_dir
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
    if local_rank() == 0:
        shutil.copyfile(history, metrics_path)
    return last


def _train_epoch(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    loader: DeviceLoader,
    config: TrainConfig,
    step_fn: Callable[..., dict[str, torch.Tensor]],
    *,
    epoch: int,
    device: torch.device,
    skip: int,
    sums: dict[str, torch.Tensor],
    stop: list[int],
    ckpt: Path,
    progress,
    label: str,
) -> dict[str, float]:
    """One epoch from step ``skip`` on; returns the epoch's mean of every loss term.

    ``progress``: False, True, or a ``rich.progress.Progress`` to add this epoch's bar to."""
    lr = config.lr_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loader.set_epoch(epoch)
    objective.train()
    bad_step = torch.tensor(-1, device=device)
    bad_state_step = torch.tensor(-1, device=device)
    state = float_state(objective.student)
    step_t = torch.tensor(skip, device=device)  # the step index on the device, advanced in place
    hook = signal_hook(label)
    with epoch_steps(
        progress, loader, total=len(loader), label=f"{label} epoch {epoch + 1}/{config.epochs}"
    ) as (advance, batches):
        for step, (weak, labels, strong) in enumerate(batches):
            # resuming mid-epoch: the batch was drawn (same RNG stream), not trained on
            if step < skip:
                continue
            if config.channels_last:
                weak = weak.contiguous(memory_format=torch.channels_last)
            out = step_fn(weak, labels, strong, lr=lr, epoch=epoch + 1)
            # Accumulate on the device; the host reads these once per epoch.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(out["loss"]), step_t, bad_step)
            # A loss can stay finite while the weights or BatchNorm statistics overflow (lr 10,
            # momentum 0.99): the max-norm of every tensor is inf or NaN exactly when one entry is.
            state_ok = (
                torch.stack(torch._foreach_norm(list(state.values()), ord=float("inf")))
                .isfinite()
                .all()
            )
            bad_state_step = torch.where((bad_state_step < 0) & ~state_ok, step_t, bad_state_step)
            step_t += 1
            advance(out["loss"])
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value
            if hook is not None and hook[:2] == (epoch + 1, step + 1):
                import os

                os.kill(os.getpid(), hook[2])
            if stop and step + 1 < len(loader):
                save_checkpoint(
                    ckpt, objective, optimizer, epochs_done=epoch, steps_done=step + 1, sums=sums
                )
                raise Interrupted(stop[0], f"epoch {epoch + 1}, step {step + 1}")
    steps = max(len(loader), 1)
    if world_size() > 1:  # every replica reports the mean over the global batch
        import torch.distributed as dist

        keys = sorted(sums)
        stacked = torch.stack(
            [torch.as_tensor(sums[k], device=device, dtype=torch.float32) for k in keys]
        )
        dist.all_reduce(stacked)
        sums = dict(zip(keys, stacked / world_size(), strict=True))
    terms = {k: float(v) / steps for k, v in sums.items()}
    if int(bad_step) >= 0:
        broken = [k for k, v in terms.items() if v != v or abs(v) == float("inf")]
        raise NumericalError(
            f"loss became non-finite at epoch {epoch + 1}, step {int(bad_step) + 1} "
            f"(terms: {', '.join(broken) or 'loss'}); lower the learning rate or check the data"
        )
    if int(bad_state_step) >= 0:
        name = next(
            (n for n, t in state.items() if not bool(torch.isfinite(t).all())), "a parameter"
        )
        raise NumericalError(
            f"{name} became non-finite at epoch {epoch + 1}, step {int(bad_state_step) + 1}; "
            f"the training diverged: lower the learning rate or the momentum"
        )
    return terms
