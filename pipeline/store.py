"""Content-addressed artifact store.

Layout under the store root::

    artifacts/<kind>/<id>/      committed artifacts (complete by construction)
        artifact.json           kind, version, config, input ids, file digests, metrics, environment
        <files>
    tmp/                        stage outputs being written; never read as artifacts
    work/<kind>-<id>/           resumable scratch (training checkpoints) of an unfinished stage

An artifact id is the sha256 of the canonical JSON of {kind, version, config,
input ids}: ids chain through the graph, so changing one stage's config changes
its id and every id downstream. A stage writes into a fresh ``tmp`` folder; the
runner commits it with one ``rename``, so a killed run leaves nothing that looks
complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StoreError

MANIFEST_FILE = "artifact.json"


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def artifact_id(kind: str, version: int, config: dict, inputs: dict[str, str]) -> str:
    """sha256 (64 hex) of the stage's recipe chained on its inputs' ids."""
    recipe = {"kind": kind, "version": version, "config": config, "inputs": inputs}
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Artifact:
    kind: str
    id: str
    path: Path
    record: dict

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics", {})

    def file(self, name: str) -> Path:
        return self.path / name


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def artifact_dir(self, kind: str, art_id: str) -> Path:
        return self.root / "artifacts" / kind / art_id

    def work_dir(self, kind: str, art_id: str) -> Path:
        return self.root / "work" / f"{kind}-{art_id}"

    def new_tmp_dir(self, kind: str, art_id: str) -> Path:
        tmp = self.root / "tmp" / f"{kind}-{art_id[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def has(self, kind: str, art_id: str) -> bool:
        return (self.artifact_dir(kind, art_id) / MANIFEST_FILE).is_file()

    def get(self, kind: str, art_id: str) -> Artifact:
        path = self.artifact_dir(kind, art_id)
        try:
            record = json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path / MANIFEST_FILE}: unreadable artifact record ({exc})") from None
        return Artifact(kind, art_id, path, record)

    def verify(self, artifact: Artifact) -> list[str]:
        """Problems found: every file listed must exist and match its sha256; nothing extra."""
        problems = []
        files = artifact.record.get("files", {})
        for name, expected in sorted(files.items()):
            path = artifact.path / name
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif file_sha256(path) != expected:
                problems.append(f"{path}: sha256 mismatch (tampered or truncated)")
        if artifact.record.get("id") != artifact.id:
            problems.append(f"{artifact.path / MANIFEST_FILE}: records id {artifact.record.get('id')!r}")
        return problems

    def commit(self, tmp: Path, *, kind: str, art_id: str, record: dict) -> Artifact:
        """Digest every file in ``tmp``, write the record, fsync, and rename into place.

        If another process committed the same id first, its artifact wins and ``tmp`` is removed:
        both computed the same recipe, and a committed artifact is never overwritten.
        """
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        record = {**record, "id": art_id, "kind": kind, "files": files, "committed_at": time.time()}
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
        for name in [*files, MANIFEST_FILE]:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        final = self.artifact_dir(kind, art_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not self.has(kind, art_id):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(final.parent)
        shutil.rmtree(self.work_dir(kind, art_id), ignore_errors=True)
        return self.get(kind, art_id)

    @contextlib.contextmanager
    def lock(self, kind: str, art_id: str) -> Iterator[None]:
        """An exclusive lock per artifact id, so two runs never compute the same recipe at once."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{kind}-{art_id}.lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def quarantine(self, kind: str, art_id: str) -> Path:
        """Move a corrupt artifact aside (kept for inspection, never used again)."""
        src = self.artifact_dir(kind, art_id)
        dst = self.root / "quarantine" / f"{kind}-{art_id}-{uuid.uuid4().hex[:8]}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return dst

    def clean_tmp(self, *, older_than_s: float = 0.0) -> int:
        """Remove abandoned temporary folders (from killed runs); returns how many."""
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for entry in tmp_root.iterdir():
            pid = _pid_of(entry.name)
            alive = pid is not None and pid != os.getpid() and _pid_alive(pid)
            if not alive and now - entry.stat().st_mtime >= older_than_s and pid != os.getpid():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def all_artifacts(self) -> list[Artifact]:
        base = self.root / "artifacts"
        found = []
        if base.is_dir():
            for kind_dir in sorted(base.iterdir()):
                for art_dir in sorted(kind_dir.iterdir()):
                    if (art_dir / MANIFEST_FILE).is_file():
                        found.append(self.get(kind_dir.name, art_dir.name))
        return found


def _pid_of(name: str) -> int | None:
    parts = name.rsplit("-", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
