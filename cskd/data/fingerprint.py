"""What a data set's files are, as one sha256: part of the id of every stage that reads data.

``stat`` (the default) hashes each file's relative path, size, modification time, inode
change time and inode number: one ``stat`` per file. Any rewrite of a file's bytes changes its
inode change time, and ``touch -r`` or ``os.utime`` cannot set it back, so an edit that keeps
size and modification time is seen, and so is moving files between class folders. The price:
a copy of the data to another disk or folder has new inodes and times, so every id that reads
it changes and the stages rerun (as do chmod, chown and renames in place). ``content`` hashes
the bytes: only a change of content (or of a path) reruns anything, a copy does not, and every
plan reads every file. Image folders get one fingerprint per split, so changing a test image reruns
validation only; the test split's fingerprint also covers the class list (the
train folder's subfolders), which defines its labels. Fingerprints are cached per
folder until ``forget()``; the planner calls it once per plan, so a plan sees the
folder as it is now.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from cskd.checkpoint import sha256_file


def _entry(path: Path, name: str, mode: str) -> bytes:
    """One file's line of a fingerprint: its name and its stat fields, or its bytes' sha256."""
    if not path.is_file():
        return f"{name}\0missing\n".encode()
    if mode == "content":
        return f"{name}\0{sha256_file(path)}\n".encode()
    st = path.stat()
    return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode()


@lru_cache(maxsize=64)
def folder_fingerprint(folder: str, mode: str = "stat") -> str:
    """sha256 over every file below ``folder`` (sorted relative paths); ``"missing"`` if absent."""
    root = Path(folder)
    if not root.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(_entry(path, path.relative_to(root).as_posix(), mode))
    return digest.hexdigest()


def files_fingerprint(paths: list[str], mode: str = "stat") -> str:
    """sha256 over the given files (in their order): tar shards named by a brace pattern."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(_entry(Path(path), Path(path).name, mode))
    return digest.hexdigest()


def split_fingerprints(
    name: str,
    root: str | None,
    mode: str = "stat",
    *,
    train_shards: str | None = None,
    test_shards: str | None = None,
) -> tuple[str, str]:
    """(train fingerprint, test fingerprint) of a data set as the loaders read it."""
    if name == "webdataset":  # the shards, and the class list beside the training shards
        from cskd.data.shards import CLASSES_FILE, expand

        train = expand(train_shards or "")
        classes = [str(Path(train[0]).parent / CLASSES_FILE)] if train else []
        test = files_fingerprint(expand(test_shards or "") + classes, mode)
        return files_fingerprint(train + classes, mode), test
    if name == "digits":  # shipped inside scikit-learn: its version says which file it is
        from importlib.metadata import (
            version,  # not `import sklearn`: half a second of start-up
        )

        return (f"sklearn-digits-{version('scikit-learn')}",) * 2
    base = Path(root or ".").expanduser()
    if name == "imagefolder":
        train_dir = base / "train"
        classes = (
            sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else []
        )
        from cskd.data.imagefolder import test_folder

        test = hashlib.sha256(
            f"{folder_fingerprint(str(test_folder(base)), mode)}\0{classes}".encode()
        ).hexdigest()
        return folder_fingerprint(str(train_dir), mode), test
    whole = folder_fingerprint(str(base), mode)  # one set of files holds both splits
    return whole, whole


def forget() -> None:
    """Drop the cached fingerprints and folder sizes (the next look reads the folders again)."""
    from cskd.data.imagefolder import decoded_train_bytes

    folder_fingerprint.cache_clear()
    decoded_train_bytes.cache_clear()
