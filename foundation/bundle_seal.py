"""The seal of a shipped bundle, and the one path that checks it.

``SHA256SUMS`` in a version folder lists every other file in it (the models, the model card,
README.md, the report, ``predict.py``, the pipeline's marker) with its sha256, in the format
``sha256sum -c SHA256SUMS`` reads, so anyone can check a bundle with standard tools.

Everything that reads a shipped bundle calls ``verify_bundle`` first: the champion stage,
``serve``, ``promote``, ``rollback``, ``export`` from a shipped version, the model registry and
``bundle verify``. A changed, missing or unlisted file (a planted ``numpy.py`` beside
``predict.py``, a symbolic link, a folder) is a ``StoreError`` (exit 4) naming it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from foundation.errors import StoreError
from foundation.files import sha256_file
from foundation.records import BundleRecord

SUMS = "SHA256SUMS"
CARD = BundleRecord.CARD
# sha256sum's text mode: digest, two spaces, name
_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9._-]+)$")


def seal_bundle(folder: Path) -> None:
    """Write ``folder/SHA256SUMS`` over every file in ``folder`` (the last file a bundle gets)."""
    lines = []
    for path in sorted(folder.iterdir()):
        if path.name == SUMS:
            continue
        if path.is_symlink() or not path.is_file() or not _LINE.match(f"{'0' * 64}  {path.name}"):
            raise StoreError(
                f"{path}: a bundle holds plain files with plain names only; not sealed"
            )
        lines.append(f"{sha256_file(path)}  {path.name}\n")
    tmp = folder / f".{SUMS}.tmp-{os.getpid()}"
    tmp.write_text("".join(lines))
    os.replace(tmp, folder / SUMS)


def read_sums(folder: Path) -> dict[str, str]:
    """``{name: sha256}`` from ``folder/SHA256SUMS``; ``StoreError`` naming the file (and line)."""
    path = folder / SUMS
    if path.is_symlink() or not path.is_file():
        raise StoreError(
            f"{path}: missing; {folder} is not a sealed bundle (shipped before bundles were "
            f"sealed, or not a bundle): ship it again with `cskd-pipeline run`, or promote a "
            f"sealed version"
        )
    sums: dict[str, str] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable ({exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if match is None or match.group(2) in sums or match.group(2) == SUMS:
            raise StoreError(
                f"{path}:{number}: not a '<sha256>  <file name>' line (or a name listed twice); "
                f"the seal is damaged"
            )
        sums[match.group(2)] = match.group(1)
    return sums


def verify_bundle(folder: Path) -> dict[str, str]:
    """Check ``folder`` (a version folder, or ``latest``) against its seal; its ``{name: sha256}``.

    Every listed file must be present as a plain file with that sha256, nothing unlisted may be
    there, the model card must be listed, and every file the card lists must carry the same
    digest in both. Raises ``StoreError`` (exit 4) naming the first file that fails.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: no such bundle folder")
    real = folder.resolve()  # `latest` is a link to the version: check what it points at
    folder = Path(os.path.relpath(real)) if real.is_relative_to(Path.cwd()) else real
    sums = read_sums(folder)
    fix = (
        "restore it, or `cskd-pipeline promote` a version that `cskd-pipeline bundle verify` "
        "accepts"
    )
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name != SUMS and entry.name not in sums:
            kind = "folder" if entry.is_dir() and not entry.is_symlink() else "file"
            raise StoreError(
                f"{entry}: an unlisted {kind} in the bundle ({SUMS} does not name it): "
                f"remove it, or {fix}"
            )
    for name, digest in sorted(sums.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise StoreError(f"{path}: missing from the bundle ({SUMS} lists it): {fix}")
        if sha256_file(path) != digest:
            raise StoreError(
                f"{path}: changed since it shipped (sha256 differs from {SUMS}): {fix}"
            )
    if CARD not in sums:
        raise StoreError(
            f"{folder / SUMS}: does not list {CARD}; not a bundle this pipeline shipped"
        )
    try:
        card_files = json.loads((folder / CARD).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        card_files = None
    if not isinstance(card_files, dict):
        raise StoreError(f"{folder / CARD}: no 'files' list; not a bundle this pipeline shipped")
    for name, digest in sorted(card_files.items()):
        if sums.get(name) != digest:
            raise StoreError(f"{folder / name}: the model card and {SUMS} disagree on it: {fix}")
    return sums
