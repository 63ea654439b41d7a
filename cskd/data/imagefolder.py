"""Image folders: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val``, ImageNet's
layout, where there is no ``test``), decoded into memory
or streamed from disk (``cskd.data.streaming``).

Every unreadable image, empty class folder or test-only class is a ``DataError``
naming the file or folder (exit 2 at the CLI). In memory, every image is decoded
(and so checked) before training starts; streaming checks each image when a
worker first reads it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cskd.data.decode import decode_image
from cskd.data.split import DataSet, Split, missing_files, tensor_stats
from cskd.errors import DataError

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def list_folder(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files sorted by class, then name; an empty class folder is an error."""
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = folder / cls
        files = (
            sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if cls_dir.is_dir()
            else []
        )
        if cls_dir.is_dir() and not files:
            raise DataError(
                f"{cls_dir}: class folder holds no images; add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"{folder}: no images found (expected {folder}/<class>/*.jpg)")
    return paths, labels


def _read_folder(
    folder: Path, classes: list[str], size: int | None, channels: int, max_pixels: int | None
) -> Split:
    from PIL import Image

    paths, labels = list_folder(folder, classes)
    images = []
    for path in paths:
        arr = decode_image(str(path), channels=channels, max_pixels=max_pixels).numpy()  # [C, H, W]
        if size is not None and arr.shape[1:] != (size, size):
            resized = Image.fromarray(arr[0] if channels == 1 else arr.transpose(1, 2, 0)).resize(
                (size, size), Image.BILINEAR
            )
            arr = np.asarray(resized, dtype=np.uint8)
            arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        if images and arr.shape != images[0].shape:
            raise DataError(
                f"{path}: size {arr.shape[1:]} differs from {images[0].shape[1:]}; set "
                "data.image_size"
            )
        images.append(arr)
    return Split(
        torch.from_numpy(np.ascontiguousarray(np.stack(images))),
        torch.tensor(labels, dtype=torch.int64),
    )


def test_folder(root: Path) -> Path:
    """``root/test``, or ``root/val`` where there is no test folder (ImageNet's layout)."""
    if not (root / "test").is_dir() and (root / "val").is_dir():
        return root / "val"
    return root / "test"


def class_folders(root: Path) -> list[str]:
    train_dir, test_dir = root / "train", test_folder(root)
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise missing_files(
            "imagefolder", root, "train/<class>/*.jpg and test/<class>/*.jpg (or val/<class>/*.jpg)"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{train_dir}: found {len(classes)} class folders, need at least 2")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(
            f"{test_dir / unknown[0]}: class {unknown[0]!r} is in test but not in train; "
            f"add training images for it or remove it from test"
        )
    return classes


def _first_image_side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only
            return min(img.size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace it") from None


@lru_cache(maxsize=16)
def decoded_train_bytes(
    root: str, image_size: int | None, grayscale: bool, max_samples: int | None
) -> int:
    """Bytes the decoded training split would take in memory (``max_samples`` of it, if set):
    what ``data.in_memory: auto`` weighs against ``data.memory_limit_mib``."""
    base = Path(root).expanduser()
    paths, _ = list_folder(base / "train", class_folders(base))
    side = image_size or _first_image_side(paths[0])
    count = min(len(paths), max_samples) if max_samples else len(paths)
    return count * (1 if grayscale else 3) * side * side


def load_imagefolder(
    root: Path,
    *,
    image_size: int | None = None,
    grayscale: bool = False,
    stream: bool = False,
    workers: int | None = 0,
    max_pixels: int | None = None,
) -> DataSet:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``); classes are the train
    folder's subfolders.

    ``stream``: keep paths only and decode batch by batch in ``workers`` processes; the
    normalisation statistics then come from a fixed sample of 2,000 training images.
    """
    classes = class_folders(root)
    channels = 1 if grayscale else 3
    if not stream:
        train = _read_folder(root / "train", classes, image_size, channels, max_pixels)
        test = _read_folder(test_folder(root), classes, image_size, channels, max_pixels)
        mean, std = tensor_stats(train.images)
        return DataSet("imagefolder", train, test, len(classes), mean, std, tuple(classes))
    from cskd.data.split import measured_stats
    from cskd.data.streaming import FileSplit

    splits: list[FileSplit] = []
    for folder in (root / "train", test_folder(root)):
        paths, labels = list_folder(folder, classes)
        if not splits:  # the test split is read at the training split's size
            side = image_size or _first_image_side(paths[0])
        splits.append(
            FileSplit(
                np.array([str(p) for p in paths]),
                torch.tensor(labels, dtype=torch.int64),
                size=side,
                channels=channels,
                workers=workers,
                max_pixels=max_pixels,
            )
        )
    mean, std = measured_stats(splits[0])
    return DataSet("imagefolder", splits[0], splits[1], len(classes), mean, std, tuple(classes))
