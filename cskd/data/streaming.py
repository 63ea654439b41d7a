"""Image folders read from disk batch by batch, for folders larger than memory.

A ``FileSplit`` holds paths and labels only; images are decoded in DataLoader
worker processes (torchvision.io for JPEG, PNG and WebP, PIL for the rest) and
leave them as uint8 batches, pinned when a GPU trains.

What a worker makes of an image follows its resolution (``data.image_size``):

- below 64 px, the image resized to a square, then the pad-crop-flip of the
  in-memory path (CIFAR style);
- from 64 px up, ImageNet style with torchvision.transforms.v2: RandomResizedCrop
  and flip for training, resize to ``size / 0.875`` and centre crop for evaluation.

Every random draw for a sample is seeded by ``(seed, epoch, sample index)``, so a
batch is the same whatever the number of workers or of training processes; each
process decodes only its slice of a global batch (the slices DeviceLoader keeps).
A file that cannot be decoded stops the run with a ``DataError`` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

# Imported here, not in the workers: a forked worker inherits them instead of paying
# for the import (a second or two) at every start.
from cskd.data.augment import random_crop_flip, strong_view
from cskd.errors import DataError

# From this size up, augmentation and evaluation are ImageNet style.
IMAGENET_STYLE_FROM = 64
# Evaluation resizes the shorter side to size / 0.875 before the centre crop (224 from 256).
EVAL_CROP_FRACTION = 0.875
# Suffixes torchvision decodes natively (libjpeg-turbo, libpng, libwebp); PIL reads the rest.
_TORCHVISION_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def default_workers() -> int:
    """The machine's cores (those this process may run on)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode(path: str, channels: int) -> torch.Tensor:
    """uint8 ``[C, H, W]``; a file that cannot be decoded is a ``DataError`` naming it."""
    try:
        if Path(path).suffix.lower() in _TORCHVISION_SUFFIXES:
            return decode_image(read_file(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        with Image.open(path) as img:
            return v2.functional.pil_to_tensor(img.convert("L" if channels == 1 else "RGB"))
    except (OSError, RuntimeError, SyntaxError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = re.sub(r"^.*?\.cpp:\d+, ", "", reason)  # torchvision prefixes the C++ source line
        raise DataError(f"{path}: not a readable image ({reason}); remove or replace it") from None


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 2_000_003 + index) % (2**63 - 1)


@dataclass(frozen=True)
class FileSplit:
    """A split as files: absolute paths, labels, and the square size a sample is read at."""

    paths: np.ndarray  # str [N]
    labels: torch.Tensor  # int64 [N]
    size: int
    channels: int
    workers: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> FileSplit:
        return replace(self, paths=self.paths[index.numpy()], labels=self.labels[index])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.channels, self.size, self.size

    @property
    def imagenet_style(self) -> bool:
        return self.size >= IMAGENET_STYLE_FROM

    def eval_view(self, image: torch.Tensor) -> torch.Tensor:
        if not self.imagenet_style:
            return _square(image, self.size)
        image = v2.functional.resize(image, [int(self.size / EVAL_CROP_FRACTION)], antialias=True)
        return v2.functional.center_crop(image, [self.size, self.size])

    def train_view(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The un-augmented training view: the square at < 64 px, a seeded RandomResizedCrop above."""
        if not self.imagenet_style:
            return _square(image, self.size)
        with torch.random.fork_rng(devices=[]):  # transforms.v2 draws from the global generator
            torch.manual_seed(seed)
            return v2.RandomResizedCrop(self.size, antialias=True)(image)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The evaluation view of every sample, in order, as uint8 batches."""
        order = [[(i, -1) for i in range(start, min(start + batch_size, len(self)))]
                 for start in range(0, len(self), batch_size)]
        yield from _data_loader(_Samples(self), order, self.workers, pin=False)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` samples' evaluation view as one uint8 tensor."""
        first = self.subset(torch.arange(min(n, len(self))))
        return torch.cat(list(first.batches(256))) if len(first) else torch.empty(0, *self.sample_shape,
                                                                                  dtype=torch.uint8)


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(image.shape[1:]) == (size, size):
        return image
    return v2.functional.resize(image, [size, size], antialias=True)


class _Samples(torch.utils.data.Dataset):
    """Item ``(index, seed)``: the evaluation view for seed -1, else the training views."""

    def __init__(self, split: FileSplit, *, crop_padding: int = 0, flip: bool = False, strong: bool = False):
        self.split, self.crop_padding, self.flip, self.strong = split, crop_padding, flip, strong

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        try:
            image = decode(str(self.split.paths[index]), self.split.channels)
        except DataError as exc:  # returned, not raised: a worker's exception reaches the parent as a traceback
            return str(exc)
        if seed < 0:
            return self.split.eval_view(image)
        raw = self.split.train_view(image, seed)[None]
        # The in-memory path's draws, per sample: crop offsets and flip, then the strong view's own stream.
        weak = random_crop_flip(raw, torch.Generator().manual_seed(seed), padding=self.crop_padding, flip=self.flip)
        if not self.strong:
            return weak[0]
        strong = strong_view(raw.float() / 255.0, torch.Generator().manual_seed(seed ^ 0x5DEECE66D),
                             padding=self.crop_padding, flip=self.flip)
        return weak[0], strong[0]


def _collate(samples: list):
    error = next((s for s in samples if isinstance(s, str)), None)
    if error is not None:
        return error
    if isinstance(samples[0], tuple):
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
    return torch.stack(samples)


def _torch_loader(dataset: _Samples, batches, workers: int, *, pin: bool, persistent: bool = False):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                                       pin_memory=pin, persistent_workers=persistent and workers > 0,
                                       prefetch_factor=4 if workers > 0 else None)


def _checked(loader) -> Iterator:
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        yield batch


def _data_loader(dataset: _Samples, batches, workers: int, *, pin: bool):
    return _checked(_torch_loader(dataset, batches, workers, pin=pin))


class _EpochOrder(torch.utils.data.Sampler):
    """This process's slice of each global batch, as ``(index, sample seed)`` lists, for the order set last."""

    def __init__(self, loader: StreamLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        loader, order = self.loader, self.loader.order
        for i in range(len(loader)):
            idx = order[i * loader.batch_size:(i + 1) * loader.batch_size][loader.rank::loader.world]
            yield [(j, _sample_seed(loader.seed, loader.epoch, j)) for j in idx]


class StreamLoader:
    """DeviceLoader's interface over a ``FileSplit``: ``(weak, labels, strong or None)`` per step."""

    def __init__(self, split: FileSplit, *, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, drop_last: bool = True, crop_padding: int = 0, flip: bool = False,
                 strong: bool = False, seed: int = 0, shard: tuple[int, int] = (0, 1)):
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
        self._loader = _torch_loader(_Samples(split, crop_padding=padding, flip=flip, strong=strong),
                                     _EpochOrder(self), split.workers, pin=self.device.type == "cuda", persistent=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        n = len(self.split)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # DeviceLoader's order
        self.order = (torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)).tolist()
        labels = self.split.labels
        for i, batch in enumerate(_checked(self._loader)):
            idx = self.order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]
            weak, strong = batch if self.strong else (batch, None)
            weak = weak.to(self.device, non_blocking=True).float() / 255.0
            if strong is not None:
                strong = strong.to(self.device, non_blocking=True)
            yield weak, labels[idx].to(self.device, non_blocking=True), strong


def measured_stats(split: FileSplit, *, samples: int = 2000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the evaluation view of a fixed, seeded sample of ``samples`` images
    (summed in float64 batch by batch: memory stays that of one batch)."""
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    total = torch.zeros(split.channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for batch in split.subset(pick).batches(256):
        x = batch.double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = ((squares / count - mean * mean) * count / max(count - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
