"""What every loader of a published data set shares: its labels checked against its images, and
torchvision's download as one ``DataError`` line that leaves no empty folder behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cskd.errors import DataError


def check_labels(labels: np.ndarray, *, images: int, num_classes: int, path: Path) -> None:
    """Labels must match the images one to one and lie in ``[0, num_classes)``."""
    if len(labels) != images:
        raise DataError(
            f"{path}: {len(labels)} labels for {images} images; the files do not belong together"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside [0, "
            f"{num_classes}); fix or replace the file"
        )



def download_published(name: str, root: Path, fetch) -> None:
    """torchvision's download, with a failure (no network, a proxy, a bad checksum) as one
    ``DataError`` line; a folder the attempt created and left empty is removed again."""
    made = [p for p in (root, *root.parents) if not p.exists()]  # folders the attempt may create
    try:
        fetch()
    except Exception as exc:  # URLError, HTTPError, RuntimeError (checksum), OSError
        for folder in made:  # innermost first; only if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        reason = (
            str(getattr(exc, "reason", "") or exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        raise DataError(
            f"{root}: downloading {name} failed ({reason}); check the network or put the files "
            "there yourself and set data.download: false"
        ) from None
