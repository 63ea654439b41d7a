"""Image folders: ``root/train/<class>/*`` and ``root/test/<class>/*``, decoded into memory.

Every unreadable image, empty class folder or test-only class is a ``DataError``
naming the file or folder (exit 2 at the CLI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cskd.data.datasets import DataSet, Split, _measured_stats, _missing
from cskd.errors import DataError

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def _read_folder(folder: Path, classes: list[str], size: int | None, mode: str) -> Split:
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = folder / cls
        files = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if cls_dir.is_dir() else []
        if cls_dir.is_dir() and not files:
            raise DataError(f"{cls_dir}: class folder holds no images; add images or remove the folder")
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if size is not None and img.size != (size, size):
                        img = img.resize((size, size), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (OSError, SyntaxError, ValueError) as exc:  # PIL: unidentified, truncated, broken
                raise DataError(f"{path}: not a readable image ({exc}); remove or replace it") from None
            if images and arr.shape != images[0].shape:
                raise DataError(f"{path}: size {arr.shape[:2]} differs from {images[0].shape[:2]}; set data.image_size")
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(f"{folder}: no images found (expected {folder}/<class>/*.jpg)")
    stack = np.stack(images)
    stack = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(stack)), torch.tensor(labels, dtype=torch.int64))


def load_imagefolder(root: Path, *, image_size: int | None = None, grayscale: bool = False) -> DataSet:
    """``root/train/<class>/*`` and ``root/test/<class>/*``; classes are the train folder's subfolders."""
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise _missing("imagefolder", root, "train/<class>/*.jpg and test/<class>/*.jpg")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{train_dir}: found {len(classes)} class folders, need at least 2")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"{test_dir / unknown[0]}: class {unknown[0]!r} is in test but not in train; "
                        f"add training images for it or remove it from test")
    mode = "L" if grayscale else "RGB"
    train = _read_folder(train_dir, classes, image_size, mode)
    test = _read_folder(test_dir, classes, image_size, mode)
    mean, std = _measured_stats(train.images)
    return DataSet("imagefolder", train, test, len(classes), mean, std, tuple(classes))
