"""CIFAR-10 and CIFAR-100 in their published python format (pickled batches, read by an unpickler
that accepts nothing but arrays), with the recipe's normalisation constants."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from cskd.data.published import check_labels, download_published
from cskd.data.split import DataSet, Split, missing_files
from cskd.errors import DataError

# Normalisation constants: the recipe's for CIFAR-100 (CSKD.md), the usual ones for CIFAR-10;
# others are measured on the training split.
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)



class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files but refuses every global except NumPy's array rebuilders.

    A pickle can name any callable; the CIFAR files need only these, so a file
    crafted to run code is refused instead of executed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"refusing to unpickle {module}.{name}: CIFAR files hold only arrays and lists"
            )
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
        check_labels(batch_labels, images=len(data), num_classes=num_classes, path=folder / name)
        images.append(data)
        labels.extend(batch_labels.tolist())
    return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))


def load_cifar(name: str, root: Path, *, download: bool = False) -> DataSet:
    """CIFAR-10/100 in the python format torchvision downloads (``cifar-10-batches-py`` etc.)."""
    if name == "cifar10":
        folder, train_files, test_files = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        label_key, meta_file, names_key, n_cls = "labels", "batches.meta", "label_names", 10
        mean, std = _CIFAR10_MEAN, _CIFAR10_STD
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta_file, names_key, n_cls = "fine_labels", "meta", "fine_label_names", 100
        mean, std = _CIFAR100_MEAN, _CIFAR100_STD
    needed = [folder / f for f in train_files + test_files]
    if not all(p.is_file() for p in needed) and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        download_published(
            name,
            root,
            lambda: (CIFAR10 if name == "cifar10" else CIFAR100)(
                str(root), train=True, download=True
            ),
        )
    if not all(p.is_file() for p in needed):
        raise missing_files(
            name, root, f"{folder.name}/{train_files[0]} ... {folder.name}/{test_files[0]}"
        )
    classes: tuple[str, ...] = ()
    if (folder / meta_file).is_file():
        classes = tuple(str(c) for c in _unpickle(folder / meta_file).get(names_key, ()))
    return DataSet(
        name,
        _cifar_split(folder, train_files, label_key, n_cls),
        _cifar_split(folder, test_files, label_key, n_cls),
        n_cls,
        mean,
        std,
        classes,
    )
