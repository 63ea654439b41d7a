"""Tar shards in the webdataset layout, for data sets kept as shards on a cluster.

A shard is an uncompressed tar; a sample is the members that share a key:
``<key>.cls`` (the label as decimal text) and ``<key>.<jpg|png|...>`` (the image file's
bytes as they were). ``cskd-pipeline shard`` writes an image folder this way with
webdataset's ``ShardWriter``, and ``classes.json`` (the class names) beside the shards.

Reading lists each shard's members once (tar headers only: the images are skipped, not
read) and then reads every image where it lies in its shard. Shards therefore stream
exactly like an image folder (``cskd.data.streaming``): the same per-sample seeded views,
each process decoding only its slice of a global batch, the workers splitting the
samples, and a val split held out of the training shards by the same seeded split.
They must be on a file system that allows seeking (a cluster's shared file system),
not behind a pipe.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cskd.data.imagefolder import class_folders, list_folder, test_folder
from cskd.data.split import DataSet, measured_stats
from cskd.data.streaming import FileSplit, Members
from cskd.errors import DataError

CLASSES_FILE = "classes.json"


def expand(pattern: str) -> list[str]:
    """A brace pattern (``train-{000000..000009}.tar``) as its files, in order."""
    from braceexpand import braceexpand

    return [os.path.expanduser(p) for p in braceexpand(pattern)]


def write_shards(
    root: Path, out: Path, *, shard_size: int, log: Callable[[str], None] = print
) -> dict:
    """Write ``root/train`` and ``root/test`` (or ``val``) as ``out/{train,test}-NNNNNN.tar``.

    Everything is written into ``out`` + ``.partial`` and renamed at the end, so an interrupted
    run leaves no half-written ``out``; an ``out`` that already holds files is refused.
    """
    import webdataset as wds

    partial = out.with_name(out.name + ".partial")
    for path in (out, partial):  # dangling or not: shards are never written through a link
        if path.is_symlink():
            raise DataError(f"{path}: is a symbolic link; choose a new --out folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out}: already exists and is not empty (or not a folder); choose a new --out folder"
        )
    if partial.exists():
        raise DataError(f"{partial}: left by an interrupted run; remove it, then run again")
    blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and (
        not blocker.is_dir() or blocker.is_symlink() and not blocker.exists()
    ):
        raise DataError(
            f"{blocker}: is not a folder; choose a --out folder whose parent is a folder"
        )
    classes = class_folders(root)
    partial.mkdir(parents=True)
    summary: dict = {"classes": classes, "splits": {}}
    for split, folder in (("train", root / "train"), ("test", test_folder(root))):
        paths, labels = list_folder(folder, classes)
        with wds.ShardWriter(
            str(partial / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0
        ) as sink:
            for position, (path, label) in enumerate(zip(paths, labels, strict=True)):
                sink.write(
                    {
                        "__key__": f"{position:09d}",
                        "cls": label,
                        path.suffix.lower().lstrip("."): path.read_bytes(),
                    }
                )
            shards = sink.shard
        pattern = (
            f"{split}-{{000000..{shards - 1:06d}}}.tar" if shards > 1 else f"{split}-000000.tar"
        )
        summary["splits"][split] = {
            "images": len(paths),
            "shards": shards,
            "pattern": str(out / pattern),
        }
        log(f"{split}: {len(paths):,} images in {shards} shard(s): {out / pattern}")
    (partial / CLASSES_FILE).write_text(json.dumps({"classes": classes}, indent=1) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return summary


# A class index is a short decimal number; nothing larger is read (a header may claim any size).
MAX_LABEL_BYTES = 32
MAX_CLASSES = 2**31


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo, url: str) -> int:
    where = f"{url}:{member.name}"
    if member.size > MAX_LABEL_BYTES:
        raise DataError(
            f"{where}: a .cls label of {member.size:,} bytes (at most {MAX_LABEL_BYTES}); rewrite "
            "the shard"
        )
    text = tar.extractfile(member).read(MAX_LABEL_BYTES).decode(errors="replace").strip()
    try:
        value = int(text)
    except ValueError:
        raise DataError(
            f"{where}: label {text[:20]!r} is not an integer; rewrite the shard"
        ) from None
    if not 0 <= value < MAX_CLASSES:
        raise DataError(
            f"{where}: label {text[:20]!r} is not a class index (0 to {MAX_CLASSES - 1}); "
            f"rewrite the shard"
        )
    return value


@lru_cache(maxsize=4096)
def _scan(
    url: str, size: int, mtime_ns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image member names, data offsets, lengths, labels) of one shard; cached per file version."""
    images: dict[str, tarfile.TarInfo] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(url, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if ext == "cls":
                    labels[key] = _label(tar, member, url)
                elif not key.startswith("__"):
                    images.setdefault(key, member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{url}: not a readable tar shard ({exc}); replace it (tars must not be compressed)"
        ) from None
    keys = [k for k in images if k in labels]
    missing = next((k for k in images if k not in labels), None) or next(
        (k for k in labels if k not in images), None
    )
    if missing is not None:
        raise DataError(
            f"{url}: sample {missing!r} has an image or a .cls label but not both; rewrite the "
            "shard"
        )
    return (
        np.array([images[k].name for k in keys]),
        np.array([images[k].offset_data for k in keys], dtype=np.int64),
        np.array([images[k].size for k in keys], dtype=np.int64),
        np.array([labels[k] for k in keys], dtype=np.int64),
    )


def _read_split(
    pattern: str,
    field: str,
    *,
    num_classes: int | None,
    size: int | None,
    channels: int,
    workers: int | None,
    max_pixels: int | None,
) -> FileSplit:
    urls = expand(pattern)
    missing = next((u for u in urls if not os.path.isfile(u)), None)
    if missing is not None:
        raise DataError(f"data.{field}: {missing} not found; check the pattern {pattern!r}")
    parts = []
    for url in urls:
        st = os.stat(url)
        parts.append((url, *_scan(url, st.st_size, st.st_mtime_ns)))
    if not any(len(p[1]) for p in parts):
        raise DataError(f"data.{field}: {pattern} holds no samples")
    labels = np.concatenate([p[4] for p in parts])
    bad = np.flatnonzero((labels < 0) | (labels >= (num_classes or np.iinfo(np.int64).max)))
    if bad.size:
        url, name = _locate(parts, int(bad[0]))
        raise DataError(
            f"{url}:{name}: label {int(labels[bad[0]])} is outside [0, "
            f"{num_classes or 'classes'}); fix the shard or classes.json"
        )
    members = Members(
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
    )
    split = FileSplit(
        np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
        torch.from_numpy(labels),
        size=size or 1,
        channels=channels,
        workers=workers,
        members=members,
        max_pixels=max_pixels,
    )
    if size is None:  # the first image's shorter side
        from dataclasses import replace

        split = replace(split, size=int(min(split.read(0).shape[1:])))
    return split


def _locate(parts: list, position: int) -> tuple[str, str]:
    for url, names, *_ in parts:
        if position < len(names):
            return url, str(names[position])
        position -= len(names)
    raise IndexError(position)


def load_shards(
    train_shards: str,
    test_shards: str,
    *,
    image_size: int | None = None,
    grayscale: bool = False,
    workers: int | None = 0,
    max_pixels: int | None = None,
) -> DataSet:
    """Training and test shards (brace patterns); classes from ``classes.json`` beside the training
    shards, or the labels' range where there is none."""
    channels = 1 if grayscale else 3
    first = Path(expand(train_shards)[0])
    classes: tuple[str, ...] = ()
    if (first.parent / CLASSES_FILE).is_file():
        try:
            classes = tuple(json.loads((first.parent / CLASSES_FILE).read_text())["classes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{first.parent / CLASSES_FILE}: not a class list ({exc}); rewrite it"
            ) from None
    num = len(classes) or None
    train = _read_split(
        train_shards,
        "train_shards",
        num_classes=num,
        size=image_size,
        channels=channels,
        workers=workers,
        max_pixels=max_pixels,
    )
    num = num or int(train.labels.max()) + 1
    test = _read_split(
        test_shards,
        "test_shards",
        num_classes=num,
        size=train.size,
        channels=channels,
        workers=workers,
        max_pixels=max_pixels,
    )
    mean, std = measured_stats(train)
    return DataSet(
        "webdataset", train, test, num, mean, std, classes or tuple(str(i) for i in range(num))
    )
