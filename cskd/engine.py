"""The classic training engine: one loop for teachers and students, any objective.

Per-epoch metrics (every loss term, val top-1, lr) go to a JSON-lines file.
Checkpoints (weights, optimizer state, epoch) are written atomically every
``checkpoint_every`` epochs; since each epoch's randomness is seeded by
``(seed, epoch)``, a resumed run reaches the same weights as an uninterrupted one.
The final model is the last epoch's; val top-1 is for monitoring only and never
reads the test split.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from cskd.checkpoint import load_tensors, save_tensors
from cskd.config import TrainConfig
from cskd.data.datasets import Split
from cskd.data.loader import DeviceLoader
from cskd.errors import NumericalError
from cskd.evaluate import predict_logits, top1
from cskd.objectives import Objective

_CKPT = "checkpoint.safetensors"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_checkpoint(path: Path, objective: Objective, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    tensors = {f"model.{k}": v for k, v in objective.student.state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
    save_tensors(tensors, path, metadata={"epochs_done": str(epoch)})


def _load_checkpoint(path: Path, objective: Objective, optimizer: torch.optim.Optimizer) -> int:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        epochs_done = int(f.metadata()["epochs_done"])
    objective.student.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict(state)
    return epochs_done


def train(
    objective: Objective,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    *,
    work_dir: Path,
    metrics_path: Path,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``objective.student`` in place; returns the last epoch's metrics.

    ``work_dir`` holds the resumable checkpoint and the metrics history; a checkpoint
    found there is resumed. The history is copied to ``metrics_path`` at the end.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    objective.to(device)
    if config.channels_last:
        objective.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    loader = DeviceLoader(train_split, batch_size=config.batch_size, device=device, shuffle=True,
                          drop_last=True, crop_padding=config.augment.crop_padding, flip=config.augment.flip,
                          strong=objective.needs_strong_view, seed=config.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.precision == "bf16" and device.type == "cuda")

    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / _CKPT
    history = work_dir / "metrics.jsonl"
    start = _load_checkpoint(ckpt, objective, optimizer) if ckpt.is_file() else 0
    # Keep the lines of the epochs the checkpoint covers; later ones are recomputed.
    history_lines = history.read_text().splitlines()[:start] if history.is_file() else []
    history.write_text("".join(line + "\n" for line in history_lines))
    last: dict = json.loads(history_lines[-1]) if history_lines else {}

    for epoch in range(start, config.epochs):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader.set_epoch(epoch)
        objective.train()
        sums: dict[str, torch.Tensor] = {}
        bad_step = torch.tensor(-1, device=device)
        epoch_t = torch.tensor(float(epoch + 1), device=device)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
        for step, (weak, labels, strong) in enumerate(bar):
            if config.channels_last:
                weak = weak.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = objective(weak, labels, strong=strong, epoch=epoch_t)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            # Accumulate on the device; the host reads these once per epoch.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(out["loss"].detach()),
                                   torch.tensor(step, device=device), bad_step)
            for key, value in out.items():
                if key != "output":
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
        steps = max(len(loader), 1)
        terms = {k: float(v) / steps for k, v in sums.items()}
        if int(bad_step) >= 0:
            broken = [k for k, v in terms.items() if not torch.isfinite(torch.tensor(v))]
            raise NumericalError(f"loss became non-finite at epoch {epoch + 1}, step {int(bad_step) + 1} "
                                 f"(terms: {', '.join(broken) or 'loss'}); lower the learning rate or check the data")
        val_top1 = top1(predict_logits(objective.student, val_split.images, device=device), val_split.labels)
        last = {"epoch": epoch + 1, "lr": lr, **terms, "val_top1": val_top1}
        with open(history, "a") as f:
            f.write(json.dumps(last) + "\n")
        if on_epoch is not None:
            on_epoch(last)
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
            _save_checkpoint(ckpt, objective, optimizer, epoch + 1)
    shutil.copyfile(history, metrics_path)
    objective.student.to("cpu").eval()
    if config.channels_last:
        objective.student.to(memory_format=torch.contiguous_format)
    return last
