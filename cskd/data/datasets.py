"""Data sets as uint8 tensors ``[N, C, H, W]`` with int64 labels.

Every loader reads the files in their usual published format and fails with a
``DataError`` that says where the files go. The test split is returned apart:
only validation reads it. The train/val split is a seeded permutation of the
training split (``split_train_val``).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from cskd.data.split import DataSet, Split, missing_files, split_train_val, tensor_stats  # noqa: F401 - re-exported
from cskd.errors import DataError

DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "webdataset")

# Normalisation constants: the recipe's for CIFAR-100 (CSKD.md), the usual ones for CIFAR-10;
# others are measured on the training split.
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


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
    test, train = Split(images[perm[:n_test]], labels[perm[:n_test]]), Split(images[perm[n_test:]], labels[perm[n_test:]])
    mean, std = tensor_stats(train.images)
    return DataSet("digits", train, test, 10, mean, std, tuple(str(i) for i in range(10)))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images (0-16) and labels, read from the file scikit-learn ships the way its
    ``load_digits`` reads it, without importing sklearn (about two seconds of every run's
    start-up); through ``load_digits`` where that file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot")


def _check_labels(labels: np.ndarray, *, images: int, num_classes: int, path: Path) -> None:
    """Labels must match the images one to one and lie in ``[0, num_classes)``."""
    if len(labels) != images:
        raise DataError(f"{path}: {len(labels)} labels for {images} images; the files do not belong together")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside [0, {num_classes}); "
                        f"fix or replace the file")


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
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
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


def _download(name: str, root: Path, fetch) -> None:
    """torchvision's download, with a failure (no network, a proxy, a bad checksum) as one
    ``DataError`` line; a folder the attempt created and left empty is removed again."""
    made = [p for p in (root, *root.parents) if not p.exists()]  # folders the attempt may create
    try:
        fetch()
    except Exception as exc:  # URLError, HTTPError, RuntimeError (checksum), OSError
        for folder in made:  # innermost first; only if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{root}: downloading {name} failed ({reason}); check the network or put the files there "
                        f"yourself and set data.download: false") from None


def load_fashion_mnist(root: Path, *, download: bool = False) -> DataSet:
    """The four IDX files (``.gz`` or not) in ``root`` or ``root/FashionMNIST/raw``."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths) and download:
        from torchvision.datasets import FashionMNIST

        _download("fashion_mnist", root, lambda: [FashionMNIST(str(root), train=t, download=True) for t in (True, False)])
        paths = [_find_idx(root, s) for s in stems]
    if any(p is None for p in paths):
        raise missing_files("fashion_mnist", root, "train-images-idx3-ubyte.gz and the three other IDX files")
    arrays = [_read_idx(p) for p in paths]
    for images, labels, path in ((arrays[0], arrays[1], paths[1]), (arrays[2], arrays[3], paths[3])):
        _check_labels(labels, images=len(images), num_classes=10, path=path)
    train = Split(torch.from_numpy(arrays[0].copy())[:, None], torch.from_numpy(arrays[1].astype(np.int64)))
    test = Split(torch.from_numpy(arrays[2].copy())[:, None], torch.from_numpy(arrays[3].astype(np.int64)))
    mean, std = tensor_stats(train.images)
    return DataSet("fashion_mnist", train, test, 10, mean, std, _FASHION_CLASSES)


# ---------------------------------------------------------------- CIFAR (python pickles)
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files but refuses every global except NumPy's array rebuilders.

    A pickle can name any callable; the CIFAR files need only these, so a file
    crafted to run code is refused instead of executed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: CIFAR files hold only arrays and lists")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            obj = _ArrayOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: not a readable CIFAR batch file ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_split(folder: Path, files: list[str], label_key: str, num_classes: int) -> Split:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{folder / name}: missing 'data' or {label_key!r}")
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        except ValueError as exc:
            raise DataError(f"{folder / name}: 'data' is not 32x32x3 images ({exc})") from None
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        _check_labels(batch_labels, images=len(data), num_classes=num_classes, path=folder / name)
        images.append(data)
        labels.extend(batch_labels.tolist())
    return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))


def load_cifar(name: str, root: Path, *, download: bool = False) -> DataSet:
    """CIFAR-10/100 in the python format torchvision downloads (``cifar-10-batches-py`` etc.)."""
    if name == "cifar10":
        folder, train_files, test_files = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        label_key, meta_file, names_key, n_cls = "labels", "batches.meta", "label_names", 10
        mean, std = _CIFAR10_MEAN, _CIFAR10_STD
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta_file, names_key, n_cls = "fine_labels", "meta", "fine_label_names", 100
        mean, std = _CIFAR100_MEAN, _CIFAR100_STD
    needed = [folder / f for f in train_files + test_files]
    if not all(p.is_file() for p in needed) and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        _download(name, root, lambda: (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True))
    if not all(p.is_file() for p in needed):
        raise missing_files(name, root, f"{folder.name}/{train_files[0]} ... {folder.name}/{test_files[0]}")
    classes: tuple[str, ...] = ()
    if (folder / meta_file).is_file():
        classes = tuple(str(c) for c in _unpickle(folder / meta_file).get(names_key, ()))
    return DataSet(name, _cifar_split(folder, train_files, label_key, n_cls),
                   _cifar_split(folder, test_files, label_key, n_cls), n_cls, mean, std, classes)


def load_dataset(name: str, *, root: str | Path | None = None, download: bool = False,
                 image_size: int | None = None, grayscale: bool = False, stream: bool = False,
                 workers: int | None = 0, train_shards: str | None = None, test_shards: str | None = None,
                 max_image_pixels: int | None = None) -> DataSet:
    """Load one of ``DATASETS``. ``root`` is required for all but ``digits`` and ``webdataset``
    (``train_shards``, ``test_shards``); ``stream`` (image folders) reads images from disk batch by
    batch in ``workers`` processes, as shards always are. ``max_image_pixels``: larger images are a
    ``DataError`` before they are decoded (default: Pillow's limit)."""
    if name == "digits":
        return load_digits_dataset()
    if name == "webdataset":
        from cskd.data.shards import load_shards

        if not train_shards or not test_shards:
            raise DataError("data set 'webdataset' needs data.train_shards and data.test_shards (brace patterns)")
        return load_shards(train_shards, test_shards, image_size=image_size, grayscale=grayscale, workers=workers,
                           max_pixels=max_image_pixels)
    if root is None:
        raise DataError(f"data set {name!r} needs data.root (the folder that holds its files)")
    root = Path(root).expanduser()
    if name == "fashion_mnist":
        return load_fashion_mnist(root, download=download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download=download)
    if name == "imagefolder":
        from cskd.data.imagefolder import load_imagefolder

        return load_imagefolder(root, image_size=image_size, grayscale=grayscale, stream=stream, workers=workers,
                                max_pixels=max_image_pixels)
    raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
