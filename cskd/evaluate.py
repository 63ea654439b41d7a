"""Batched inference and accuracy on uint8 images: a tensor, or a split (in memory or streamed)."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def predict_logits(model: nn.Module, images, *, batch_size: int = 512,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits ``[N, C]`` (float32, on the CPU) for uint8 images ``[N, C, H, W]``, or for a
    ``Split``/``FileSplit`` (anything with ``batches(batch_size)``)."""
    was_training = model.training
    model.eval()
    outputs = []
    batches = (
        (images[start : start + batch_size] for start in range(0, images.shape[0], batch_size))
        if isinstance(images, torch.Tensor)
        else images.batches(batch_size)
    )
    for batch in batches:
        batch = batch.to(device).float() / 255.0
        outputs.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(dim=1) == labels).double().mean()) * 100.0
