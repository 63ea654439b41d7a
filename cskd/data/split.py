"""The data types every loader returns and every consumer reads: ``Split`` (images and labels in
memory; ``streaming.FileSplit`` has the same interface and decodes batch by batch), ``DataSet``,
the seeded train/val split, and the normalisation statistics (``batch_stats``: per-channel mean
and std, the one name for them; ``tensor_stats`` for images in memory). It imports nothing else
of the data package, so the loaders (datasets, imagefolder, shards, streaming) import it and
never one another in a circle."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cskd.errors import DataError


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images in order, ``batch_size`` at a time (``FileSplit`` decodes them instead)."""
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size]

    def head(self, n: int) -> torch.Tensor:
        return self.images[:n]


@dataclass(frozen=True)
class DataSet:
    name: str
    train: Split  # or a FileSplit (cskd.data.streaming): the same interface, decoded batch by batch
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        return int(self.train.sample_shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.sample_shape[1]), int(self.train.sample_shape[2])


def split_train_val(train: Split, *, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """A fixed, seeded split of the training split into (train, val); ``val_fraction`` 0
    keeps the whole split for training and an empty val split (the authors' recipe)."""
    n = len(train)
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def batch_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std in [0, 1] of uint8 batches ``[B, C, H, W]``, summed in
    float64 batch by batch: memory stays that of one batch (a float copy of 60,000 CIFAR images
    is 700 MB, two of them were the load's peak)."""
    total = squares = None
    count = 0
    for batch in batches:
        x = batch.double() / 255.0
        sums, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, squares = (sums, sq) if total is None else (total + sums, squares + sq)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares / count - mean * mean) * count / max(count - 1, 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def tensor_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``batch_stats`` of images held in memory, a chunk of at most 8M values at a time."""
    # 8M values: 64 MB in float64 whatever the image size
    chunk = max(1, 2**23 // max(1, images[0].numel()))
    return batch_stats(images[start:start + chunk] for start in range(0, len(images), chunk))


def missing_files(name: str, root: Path, expected: str) -> DataError:
    return DataError(
        f"data set {name!r}: files not found under {root} (expected {expected}); "
        f"put them there, or set data.download: true where the network allows"
    )


def measured_stats(
    split: Split, *, samples: int = 2000, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``batch_stats`` of a fixed, seeded sample of ``samples`` images of a split in memory or
    streamed (``FileSplit``: its evaluation view, decoded)."""
    pick = (
        torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples]
        .sort()
        .values
    )
    return batch_stats(split.subset(pick).batches(256))
