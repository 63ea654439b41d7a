"""Files the pipeline writes: hashing, canonical JSON, confined paths, and the one
atomic swap of an output folder.

An output folder (a report, a shipped bundle) carries a marker file naming what
made it. The swap replaces only a folder that has such a marker: a folder the
pipeline did not make is never deleted, whatever the manifest says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from foundation.errors import OutputError

__all__ = ["sha256_file", "canonical_json", "fsync_dir", "confined", "check_replaceable",
           "replace_output_dir", "read_marker", "OUTPUT_MARKER", "LATEST", "latest_version",
           "check_new_path", "write_new_file", "check_owned_files", "copy_owned_files", "listing",
           "read_json_or_none"]

OUTPUT_MARKER = ".cskd-output.json"


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read in blocks (a model of gigabytes is never held whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


LATEST = "latest"  # the link in a ship or report folder to its newest (or champion) entry


def canonical_json(obj: object) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: the same data always gives the same bytes."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


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
        where = (
            "is the working directory itself"
            if resolved == base
            else f"resolves to {resolved}, outside {base}"
        )
        raise OutputError(
            f"{field}: {path!r} {where}; use a sub-folder of the working directory "
            f"(and no symlink that leaves it)"
        )
    return resolved


def latest_version(folder: Path) -> str | None:
    """The entry ``folder/latest`` points at (in a ship folder: the champion version), or None."""
    link = folder / LATEST
    return os.readlink(link).rstrip("/").split("/")[-1] if link.is_symlink() else None


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
        raise OutputError(
            f"{field}: {final} exists and was not made by cskd-pipeline (no {OUTPUT_MARKER} "
            f"inside); move it away or choose another {field}"
        )


def replace_output_dir(
    final: Path,
    fill: Callable[[Path], None],
    *,
    marker: dict,
    field: str,
    seal: Callable[[Path], None] | None = None,
) -> Path:
    """Build a folder with ``fill(tmp)``, then swap it in for ``final`` atomically.

    ``final`` may be absent or a folder this pipeline made (it has the marker). Anything
    else there (a user's folder, a file, a symlink) is refused with ``OutputError``; nothing
    is deleted. The folder is built in a hidden sibling and renamed, so a reader never sees
    a half-written folder; the old one is renamed aside before it is removed. ``seal(tmp)``, if
    given, runs last, over everything the folder holds (the marker included).
    """
    check_replaceable(final, field=field)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        fill(tmp)
        (tmp / OUTPUT_MARKER).write_text(
            json.dumps({"made_by": "cskd-pipeline", **marker}, indent=2) + "\n"
        )
        if seal is not None:
            seal(tmp)
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
            raise OutputError(
                f"{link}: is a symbolic link; the {what} is never written through a link "
                f"(choose another path)"
            )
    for parent in path.parents:
        if parent.is_symlink() and not parent.exists():
            raise OutputError(
                f"{parent}: is a dangling symbolic link; choose another path for the {what}"
            )
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"{parent}: is a file, not a folder; choose another path for the {what}"
                )
            break


def write_new_file(path: Path, text: str, *, what: str) -> None:
    """Create ``path`` with ``text``; never overwrite, never follow a link (``O_EXCL |
    O_NOFOLLOW``)."""
    check_new_path(path, what=what)
    if path.exists():
        raise OutputError(f"{path} already exists; it is not overwritten (choose another folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644
        )
    except FileExistsError:  # made, or linked, between the check and now
        raise OutputError(
            f"{path} already exists; it is not overwritten (choose another folder)"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


EXPORT_MARKER = ".cskd-export.json"


def check_owned_files(folder: Path, names: list[str]) -> dict[str, str]:
    """Raise ``OutputError`` unless every name can be written into ``folder``: absent, or written
    there by ``copy_owned_files`` and unchanged since. Returns what that marker records."""
    if folder.is_symlink():
        raise OutputError(f"{folder}: is a symbolic link; choose another --out folder")
    if not folder.is_dir():
        check_new_path(folder / "file", what="export")
        return {}
    made = (_read_marker_json(folder / EXPORT_MARKER) or {}).get("files", {})
    for name in [*names, EXPORT_MARKER]:
        path = folder / name
        if path.is_symlink() or (
            path.exists()
            and name != EXPORT_MARKER
            and (not path.is_file() or made.get(name) != sha256_file(path))
        ):
            raise OutputError(
                f"{path}: exists and was not written by `cskd-pipeline export` (or was changed "
                f"since); move it away or choose another --out folder"
            )
    return made


def copy_owned_files(folder: Path, files: dict[str, Path]) -> list[Path]:
    """Copy ``files`` (name in ``folder`` -> source) into ``folder``, which may hold the user's own
    files too. A name already there is replaced only if this function wrote it and it is unchanged
    since (its sha256 is in the folder's ``.cskd-export.json``); anything else is refused with
    ``OutputError`` before a byte is written. Each file lands by an atomic rename."""
    made = check_owned_files(folder, list(files))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in files.items():
        tmp = folder / f".{name}.tmp-{uuid.uuid4().hex[:6]}"
        shutil.copyfile(source, tmp)
        os.replace(tmp, folder / name)
        made[name] = sha256_file(folder / name)
        written.append(folder / name)
    tmp = folder / f".{EXPORT_MARKER}.tmp-{uuid.uuid4().hex[:6]}"
    tmp.write_text(json.dumps({"made_by": "cskd-pipeline", "files": made}, indent=2) + "\n")
    os.replace(tmp, folder / EXPORT_MARKER)
    return written


def _read_marker_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("made_by") == "cskd-pipeline" else None


def listing(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Every entry below ``folder`` (relative posix name -> path) and the symlinks found."""
    files, links = {}, []
    for root, dirs, names in os.walk(folder):
        for name in [*names, *dirs]:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif name in names:
                files[rel] = path
    return files, links


def read_json_or_none(path: Path) -> object:
    """The JSON in ``path``, or None when it is missing, unreadable, not JSON, or a symlink."""
    try:
        if path.is_symlink():
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
