"""Data sets as uint8 tensors ``[N, C, H, W]`` with int64 labels.

Every loader reads the files in their usual published format and fails with a
``DataError`` that says where the files go. The test split is returned apart:
only validation reads it. The train/val split is a seeded permutation of the
training split (``split_train_val``).
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from cskd.data.cifar import load_cifar
from cskd.data.published import check_labels, download_published
from cskd.data.split import DataSet, Split, missing_files, split_train_val, tensor_stats  # noqa: F401 - re-exported
from cskd.errors import DataError

DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "webdataset")

# ---------------------------------------------------------------- digits
def load_digits_dataset() -> DataSet:
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), shipped offline.

    It has no official test split: a fixed 20% (seed 0, independent of the manifest)
    is the test split.
    """
    pixels, target = _digits_arrays()
    images = torch.from_numpy((pixels * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = len(labels) // 5
    test, train = (
        Split(images[perm[:n_test]], labels[perm[:n_test]]),
        Split(images[perm[n_test:]], labels[perm[n_test:]]),
    )
    mean, std = tensor_stats(train.images)
    return DataSet("digits", train, test, 10, mean, std, tuple(str(i) for i in range(10)))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images (0-16) and labels, read from the file scikit-learn ships the way its
    ``load_digits`` reads it, without importing sklearn (about two seconds of every run's
    start-up); through ``load_digits`` where that file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = (
        Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        if spec
        else None
    )
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated file ({exc}); replace it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_fashion_mnist(root: Path, *, download: bool = False) -> DataSet:
    """The four IDX files (``.gz`` or not) in ``root`` or ``root/FashionMNIST/raw``."""
    stems = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths) and download:
        from torchvision.datasets import FashionMNIST

        download_published(
            "fashion_mnist",
            root,
            lambda: [FashionMNIST(str(root), train=t, download=True) for t in (True, False)],
        )
        paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths):
        raise missing_files(
            "fashion_mnist", root, "train-images-idx3-ubyte.gz and the three other IDX files"
        )
    arrays = [_read_idx(p) for p in paths]
    for images, labels, path in (
        (arrays[0], arrays[1], paths[1]),
        (arrays[2], arrays[3], paths[3]),
    ):
        check_labels(labels, images=len(images), num_classes=10, path=path)
    train = Split(
        torch.from_numpy(arrays[0].copy())[:, None], torch.from_numpy(arrays[1].astype(np.int64))
    )
    test = Split(
        torch.from_numpy(arrays[2].copy())[:, None], torch.from_numpy(arrays[3].astype(np.int64))
    )
    mean, std = tensor_stats(train.images)
    return DataSet("fashion_mnist", train, test, 10, mean, std, _FASHION_CLASSES)


# ---------------------------------------------------------------- CIFAR (python pickles)
def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    grayscale: bool = False,
    stream: bool = False,
    workers: int | None = 0,
    train_shards: str | None = None,
    test_shards: str | None = None,
    max_image_pixels: int | None = None,
) -> DataSet:
    """Load one of ``DATASETS``. ``root`` is required for all but ``digits`` and ``webdataset``
    (``train_shards``, ``test_shards``); ``stream`` (image folders) reads images from disk batch by
    batch in ``workers`` processes, as shards always are. ``max_image_pixels``: larger images are a
    ``DataError`` before they are decoded (default: Pillow's limit)."""
    if name == "digits":
        return load_digits_dataset()
    if name == "webdataset":
        from cskd.data.shards import load_shards

        if not train_shards or not test_shards:
            raise DataError(
                "data set 'webdataset' needs data.train_shards and data.test_shards (brace "
                "patterns)"
            )
        return load_shards(
            train_shards,
            test_shards,
            image_size=image_size,
            grayscale=grayscale,
            workers=workers,
            max_pixels=max_image_pixels,
        )
    if root is None:
        raise DataError(f"data set {name!r} needs data.root (the folder that holds its files)")
    root = Path(root).expanduser()
    if name == "fashion_mnist":
        return load_fashion_mnist(root, download=download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download=download)
    if name == "imagefolder":
        from cskd.data.imagefolder import load_imagefolder

        return load_imagefolder(
            root,
            image_size=image_size,
            grayscale=grayscale,
            stream=stream,
            workers=workers,
            max_pixels=max_image_pixels,
        )
    raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
