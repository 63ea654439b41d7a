"""A device-resident loader: uint8 images live on the device, batches are gathered
by a seeded permutation, augmentation runs batched on the device.

The same code runs on CPU (tests) and GPU. Each epoch's randomness comes from a
generator seeded with ``(seed, epoch)``, so resuming at an epoch boundary
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cskd.data.augment import random_crop_flip, strong_view
from cskd.data.datasets import Split


class DeviceLoader:
    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        crop_padding: int = 0,
        flip: bool = False,
        strong: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.crop_padding, self.flip, self.strong = crop_padding, flip, strong
        self.seed = seed
        # (rank, world): every replica draws the same global batch (same stream) and keeps
        # its slice, so N replicas see exactly what one process would at the global batch size.
        self.rank, self.world = shard
        self.epoch = 0
        # A batch larger than the data set would yield nothing with drop_last.
        if drop_last and len(self.labels) < batch_size:
            self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, stream: int = 0) -> torch.Generator:
        # Distinct, reproducible stream per (seed, epoch, stream).
        return torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + self.epoch + stream * 7_919
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Yields ``(weak [B,C,H,W] float in [0,1], labels [B], strong or None)``."""
        gen = self._generator()
        # The strong view draws from its own stream, so the order and the weak view of a
        # seed are the same whether or not a loss asks for a strong view: cells of a
        # method comparison that share a seed see the same batches.
        strong_gen = self._generator(stream=1) if self.strong else None
        n = len(self.labels)
        order = (
            torch.randperm(n, generator=gen, device=self.device)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            raw = self.images[idx].float() / 255.0
            weak = raw
            if self.crop_padding or self.flip:
                weak = random_crop_flip(raw, gen, padding=self.crop_padding, flip=self.flip)
            strong = (
                strong_view(raw, strong_gen, padding=self.crop_padding, flip=self.flip)
                if self.strong
                else None
            )
            labels = self.labels[idx]
            if self.world > 1:
                part = slice(self.rank, None, self.world)
                weak, labels = weak[part], labels[part]
                strong = strong[part] if strong is not None else None
            yield weak, labels, strong
