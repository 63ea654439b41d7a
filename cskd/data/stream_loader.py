"""Training batches streamed from files (``StreamLoader``), the streaming counterpart of the
in-memory ``DeviceLoader``: an epoch's order drawn per rank, decoded by worker processes."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch

from cskd.data.streaming import (
    FileSplit,
    Samples,
    checked_batches,
    decoding_workers,
    sample_seed,
    torch_loader,
)


class _EpochOrder(torch.utils.data.Sampler):
    """This process's slice of each global batch, as ``(index, sample seed)`` lists, for the order
    set last.

    It holds its loader weakly: a cycle (loader -> DataLoader -> sampler -> loader) would keep a
    dropped loader's worker processes alive until a garbage collection, which could then run in
    a worker forked for the next loader and fail there ("can only test a child process")."""

    def __init__(self, loader: StreamLoader):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> StreamLoader:
        return self._loader()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        loader, order = self.loader, self.loader.order
        for i in range(len(loader)):
            idx = order[i * loader.batch_size : (i + 1) * loader.batch_size][
                loader.rank :: loader.world
            ]
            yield [(j, sample_seed(loader.seed, loader.epoch, j)) for j in idx]


class StreamLoader:
    """DeviceLoader's interface over a ``FileSplit``: ``(weak, labels, strong or None)`` per
    step."""

    def __init__(
        self,
        split: FileSplit,
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
        self.split, self.device = split, torch.device(device)
        self.labels = split.labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last = drop_last and len(split) >= batch_size
        self.rank, self.world = shard
        self.epoch = 0
        self.order: list[int] = []
        # From 64 px up the random resized crop takes the place of the pad-crop.
        padding = 0 if split.imagenet_style else crop_padding
        self.strong = strong
        # Workers stay up from epoch to epoch; the order sampler reads the epoch in this process.
        self._loader = torch_loader(
            Samples(split, crop_padding=padding, flip=flip, strong=strong),
            _EpochOrder(self),
            decoding_workers(split.workers),
            pin=self.device.type == "cuda",
            persistent=True,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        n = len(self.split)
        # DeviceLoader's order
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.order = (
            torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        ).tolist()
        labels = self.split.labels
        for i, batch in enumerate(checked_batches(self._loader)):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size][
                self.rank :: self.world
            ]
            weak, strong = batch if self.strong else (batch, None)
            weak = weak.to(self.device, non_blocking=True).float() / 255.0
            if strong is not None:
                strong = strong.to(self.device, non_blocking=True)
            yield weak, labels[idx].to(self.device, non_blocking=True), strong
