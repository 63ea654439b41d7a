"""Image folders read from disk batch by batch, for folders larger than memory.

A ``FileSplit`` holds paths and labels only; images are decoded in DataLoader
worker processes (``cskd.data.decode``, the one decoder of every data path) and
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

import gc
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

# Imported here, not in the workers: a forked worker inherits them instead of paying
# for the import (a second or two) at every start.
from cskd.data.augment import pad_crop_flip, resized_crop_box, strong_view
from cskd.data.decode import decode_image
from cskd.errors import DataError

# From this size up, augmentation and evaluation are ImageNet style.
IMAGENET_STYLE_FROM = 64
# Evaluation resizes the shorter side to size / 0.875 before the centre crop (224 from 256).
EVAL_CROP_FRACTION = 0.875


def decoding_workers(configured: int | None) -> int:
    """``data.workers``, or by default the machine's cores shared among the training processes on
    it (the elastic launcher says how many: LOCAL_WORLD_SIZE)."""
    if configured is not None:
        return configured
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 2_000_003 + index) % (2**63 - 1)


@dataclass(frozen=True)
class Members:
    """Where each image lies inside its tar shard (uncompressed tars allow reading one member)."""

    names: np.ndarray  # str [N], e.g. 000000042.jpg
    offsets: np.ndarray  # int64 [N]: the first byte of the member's data
    lengths: np.ndarray  # int64 [N]


@dataclass(frozen=True)
class FileSplit:
    """A split as files: absolute paths, labels, and the square size a sample is read at. For
    tar shards, ``paths`` are the shard files and ``members`` say where in them each image lies."""

    paths: np.ndarray  # str [N]
    labels: torch.Tensor  # int64 [N]
    size: int
    channels: int
    workers: int | None = 0  # None: decoding_workers()'s default
    members: Members | None = None
    max_pixels: int | None = None  # data.max_image_pixels (None: Pillow's limit)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> FileSplit:
        pick = index.numpy()
        members = (
            None
            if self.members is None
            else Members(
                self.members.names[pick], self.members.offsets[pick], self.members.lengths[pick]
            )
        )
        return replace(self, paths=self.paths[pick], labels=self.labels[index], members=members)

    def read(self, index: int) -> torch.Tensor:
        """Sample ``index`` decoded (uint8 ``[C, H, W]``, the file's own size)."""
        path = str(self.paths[index])
        if self.members is None:
            return decode_image(path, channels=self.channels, max_pixels=self.max_pixels)
        m = self.members
        with open(path, "rb") as f:
            f.seek(int(m.offsets[index]))
            data = f.read(int(m.lengths[index]))
        return decode_image(
            data,
            channels=self.channels,
            where=f"{path}:{m.names[index]}",
            max_pixels=self.max_pixels,
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.channels, self.size, self.size

    @property
    def imagenet_style(self) -> bool:
        return self.size >= IMAGENET_STYLE_FROM

    def eval_view(self, image: torch.Tensor) -> torch.Tensor:
        if not self.imagenet_style:
            return _square(image, self.size)
        image = _v2().functional.resize(
            image, [int(self.size / EVAL_CROP_FRACTION)], antialias=True
        )
        return _v2().functional.center_crop(image, [self.size, self.size])

    def train_view(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """The un-augmented training view: the square below 64 px, a RandomResizedCrop from 64
        px."""
        if not self.imagenet_style:
            return _square(image, self.size)
        top, left, height, width = resized_crop_box(image.shape[1], image.shape[2], rng)
        return _v2().functional.resized_crop(
            image, top, left, height, width, [self.size, self.size], antialias=True
        )

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The evaluation view of every sample, in order, as uint8 batches."""
        order = [
            [(i, -1) for i in range(start, min(start + batch_size, len(self)))]
            for start in range(0, len(self), batch_size)
        ]
        yield from _data_loader(Samples(self), order, decoding_workers(self.workers), pin=False)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` samples' evaluation view as one uint8 tensor."""
        first = self.subset(torch.arange(min(n, len(self))))
        return (
            torch.cat(list(first.batches(256)))
            if len(first)
            else torch.empty(0, *self.sample_shape, dtype=torch.uint8)
        )


def _v2():
    """torchvision's transforms, imported on first use: importing torchvision loads torch._dynamo
    (a second of start-up that `plan`, `--help` and every error message would otherwise wait
    for)."""
    from torchvision.transforms import v2

    return v2


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(image.shape[1:]) == (size, size):
        return image
    return _v2().functional.resize(image, [size, size], antialias=True)


class Samples(torch.utils.data.Dataset):
    """Item ``(index, seed)``: the evaluation view for seed -1, else the training views."""

    def __init__(
        self, split: FileSplit, *, crop_padding: int = 0, flip: bool = False, strong: bool = False
    ):
        self.split, self.crop_padding, self.flip, self.strong = split, crop_padding, flip, strong

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        try:
            image = self.split.read(index)
        # returned, not raised: a worker's exception reaches the parent as a traceback
        except DataError as exc:
            return str(exc)
        if seed < 0:
            return self.split.eval_view(image)
        rng = random.Random(seed)
        raw = self.split.train_view(image, rng)
        weak = pad_crop_flip(raw, rng, padding=self.crop_padding, flip=self.flip)
        if not self.strong:
            return weak
        # The paper preset's strong view (the in-memory path's code on a batch of one), on its own
        # stream.
        strong = strong_view(
            raw[None].float() / 255.0,
            torch.Generator().manual_seed(seed ^ 0x5DEECE66D),
            padding=self.crop_padding,
            flip=self.flip,
        )
        return weak, strong[0]


def _collate(samples: list):
    error = next((s for s in samples if isinstance(s, str)), None)
    if error is not None:
        return error
    if isinstance(samples[0], tuple):
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
    return torch.stack(samples)


def _freeze_inherited(_worker_id: int) -> None:
    """A forked worker never collects what it inherited (another loader's iterator, whose cleanup
    only works in the process that made it)."""
    gc.freeze()


def torch_loader(dataset: Samples, batches, workers: int, *, pin: bool, persistent: bool = False):
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_freeze_inherited if workers > 0 else None,
    )


def checked_batches(loader) -> Iterator:
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        yield batch


def _data_loader(dataset: Samples, batches, workers: int, *, pin: bool):
    return checked_batches(torch_loader(dataset, batches, workers, pin=pin))
