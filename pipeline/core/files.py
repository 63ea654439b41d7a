"""Files the pipeline writes: hashing, canonical JSON, confined paths, and the one
atomic swap of an output folder.

An output folder (a report, a shipped bundle) carries a marker file naming what
made it. The swap replaces only a folder that has such a marker: a folder the
pipeline did not make is never deleted, whatever the manifest says.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from cskd.checkpoint import sha256_file
from pipeline.core.errors import OutputError

__all__ = ["sha256_file", "canonical_json", "fsync_dir", "confined", "check_replaceable", "replace_output_dir",
           "read_marker", "OUTPUT_MARKER", "check_new_path", "write_new_file"]

OUTPUT_MARKER = ".cskd-output.json"


def canonical_json(obj: object) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: the same data always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def confined(path: str | Path, *, field: str, base: Path | None = None) -> Path:
    """``path`` resolved (symlinks followed) and checked to lie strictly inside ``base`` (the cwd).

    Checking the resolved path, not the text, is what stops a symlinked folder from
    sending output elsewhere. Raises ``OutputError`` naming the manifest field.
    """
    base = (base or Path.cwd()).resolve()
    resolved = (base / path).resolve()
    if resolved == base or not resolved.is_relative_to(base):
        where = "is the working directory itself" if resolved == base else f"resolves to {resolved}, outside {base}"
        raise OutputError(f"{field}: {path!r} {where}; use a sub-folder of the working directory "
                          f"(and no symlink that leaves it)")
    return resolved


def read_marker(folder: Path) -> dict | None:
    """The marker of an output folder the pipeline made, or None (not ours, or unreadable)."""
    marker = folder / OUTPUT_MARKER
    if folder.is_symlink() or not marker.is_file() or marker.is_symlink():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("made_by") == "cskd-pipeline" else None


def check_replaceable(final: Path, *, field: str) -> None:
    """Raise ``OutputError`` unless ``final`` is absent or a folder this pipeline made."""
    if final.is_symlink() or (final.exists() and read_marker(final) is None):
        raise OutputError(f"{field}: {final} exists and was not made by cskd-pipeline (no {OUTPUT_MARKER} "
                          f"inside); move it away or choose another {field}")


def replace_output_dir(final: Path, fill: Callable[[Path], None], *, marker: dict, field: str) -> Path:
    """Build a folder with ``fill(tmp)``, then swap it in for ``final`` atomically.

    ``final`` may be absent or a folder this pipeline made (it has the marker). Anything
    else there (a user's folder, a file, a symlink) is refused with ``OutputError``; nothing
    is deleted. The folder is built in a hidden sibling and renamed, so a reader never sees
    a half-written folder; the old one is renamed aside before it is removed.
    """
    check_replaceable(final, field=field)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        fill(tmp)
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"made_by": "cskd-pipeline", **marker}, indent=2) + "\n")
        for path in tmp.iterdir():
            if path.is_file():
                path.chmod(0o644)  # bundles are read by other users and services
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old)
    return final


def check_new_path(path: Path, *, what: str) -> None:
    """Raise ``OutputError`` unless ``path`` can be made as a new file or folder without following a
    link: no symbolic link (dangling or not) at it or at any folder above it that would be made,
    and no file where a folder above it must be. Checked before anything is written."""
    for link in (path, path.parent):  # the file, and the folder named to hold it
        if link.is_symlink():
            raise OutputError(f"{link}: is a symbolic link; the {what} is never written through a link "
                              f"(choose another path)")
    for parent in path.parents:
        if parent.is_symlink() and not parent.exists():
            raise OutputError(f"{parent}: is a dangling symbolic link; choose another path for the {what}")
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{parent}: is a file, not a folder; choose another path for the {what}")
            break


def write_new_file(path: Path, text: str, *, what: str) -> None:
    """Create ``path`` with ``text``; never overwrite, never follow a link (``O_EXCL | O_NOFOLLOW``)."""
    check_new_path(path, what=what)
    if path.exists():
        raise OutputError(f"{path} already exists; it is not overwritten (choose another folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:  # made, or linked, between the check and now
        raise OutputError(f"{path} already exists; it is not overwritten (choose another folder)") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
