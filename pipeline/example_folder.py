"""``cskd-pipeline init DIR --example digits``: an image folder a newcomer has without downloading anything
(scikit-learn's handwritten digits, saved as PNG files in the ``train/``/``test/`` layout a user's
own images take) and a manifest that reads it, so the "your own image folder" path is tried before
anyone brings their own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from foundation.errors import OutputError
from foundation.files import write_new_file

IMAGES = "images"


def write_example(directory: Path, starter: str) -> tuple[Path, dict[str, int]]:
    """``directory/images/{train,test}/<digit>/*.png`` and ``directory/manifest.yaml``; returns the
    manifest's path and the number of images per split. Nothing is overwritten, and the image
    folder appears whole or not at all (written beside it, then renamed)."""
    images, manifest = directory / IMAGES, directory / "manifest.yaml"
    for path in (images, manifest):
        if path.exists() or path.is_symlink():
            raise OutputError(f"{path} already exists; it is not overwritten (choose another folder)")
    directory.mkdir(parents=True, exist_ok=True)
    counts = _write_images(directory, images)
    write_new_file(manifest, example_manifest(starter), what="manifest")
    return manifest, counts


def _write_images(directory: Path, images: Path) -> dict[str, int]:
    from PIL import Image

    from cskd.data.datasets import load_digits_dataset

    digits = load_digits_dataset()  # the digits data set's own fixed 80/20 split
    tmp = Path(tempfile.mkdtemp(prefix=".images-", dir=directory))
    try:
        counts = {}
        for split, part in (("train", digits.train), ("test", digits.test)):
            for index, (image, label) in enumerate(zip(part.images.numpy(), part.labels.tolist(), strict=True)):
                folder = tmp / split / digits.class_names[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[0]).save(folder / f"{index:04d}.png")
            counts[split] = len(part.labels)
        os.rename(tmp, images)  # fails if something appeared there meanwhile: it is left alone
        return counts
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def example_manifest(starter: str) -> str:
    """The starter manifest, reading the example's image folder instead of the built-in digits."""
    builtin = ("data:\n"
               "  name: digits          # 1,797 8x8 grayscale images; a fixed 20% is the test split\n")
    folder = ("data:\n"
              "  name: imagefolder     # images/train/<class>/*.png and images/test/<class>/*.png: your own\n"
              "  root: images          # images go in the same layout (any size: set image_size to resize)\n"
              "  grayscale: true       # one channel, as the digits are\n")
    if builtin not in starter or "name: my-model\n" not in starter:
        raise RuntimeError("pipeline/starter.yaml changed: update example_manifest to match")
    return starter.replace(builtin, folder).replace("name: my-model\n", "name: digits-folder\n")
