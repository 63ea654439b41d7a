"""Content-addressed, sealed artifact store.

Layout under the store root::

    .cskd-store                 marks the folder as a store (a user's folder is never used as one)
    artifacts/<kind>/<id>/      committed artifacts
        artifact.json           the record: kind, version, config, input ids, metrics, verdicts,
                                environment
        seal.json               sha256 of every file in the folder, artifact.json included
        <files>
    tmp/                        stage outputs being written; never read as artifacts
    work/<kind>-<id>/           resumable scratch (training checkpoints) of an unfinished stage
    quarantine/                 artifacts that failed verification, kept for inspection
    locks/                      one lock file per artifact id

An artifact id is the sha256 of the canonical JSON of {kind, version, config,
input ids}: ids chain through the graph. A stage writes into a fresh ``tmp``
folder; the runner seals and commits it with one ``rename``. ``verify`` checks
the seal completely: nothing missing, nothing extra, nothing edited, no symlink.
A record is trusted only after its artifact verifies, so an edited verdict or
metric is caught like an edited weights file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from foundation.artifact import Artifact
from foundation.environment import pid_alive
from foundation.errors import OutputError, StoreError
from foundation.files import fsync_dir, listing, read_json_or_none, sha256_file

RECORD_FILE = "artifact.json"
SEAL_FILE = "seal.json"
STORE_MARKER = ".cskd-store"
RUN_INDEX = "runs.jsonl"
_STORE_PARTS = {"artifacts", "tmp", "work", "quarantine", "superseded", "locks", "cache", "logs",
                STORE_MARKER, RUN_INDEX}
_TMP_NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{16}-(\d+)-[0-9a-f]{8}$")


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- layout -----------------------------------------------------------------------
    def artifact_dir(self, kind: str, art_id: str) -> Path:
        return self.root / "artifacts" / kind / art_id

    def work_dir(self, kind: str, art_id: str) -> Path:
        return self.root / "work" / f"{kind}-{art_id}"

    def claim(self) -> None:
        """Make sure ``root`` is a store: absent, empty, marked, or holding only store folders.

        A folder with anything else in it is a user's folder: refused (exit 2), never written to.
        """
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise OutputError(f"store: {self.root} is not a folder; choose another store path")
        if self.root.is_dir() and not (self.root / STORE_MARKER).is_file():
            names = {p.name for p in self.root.iterdir()}
            # A store made before the marker existed holds artifacts/ and store folders only.
            foreign = sorted(names - _STORE_PARTS) if "artifacts" in names else sorted(names)
            if foreign:
                raise OutputError(
                    f"store: {self.root} already holds files the pipeline did not make "
                    f"({', '.join(foreign[:3])}); choose an empty or new folder for 'store'"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STORE_MARKER).write_text("cskd-pipeline artifact store\n")

    def new_tmp_dir(self, kind: str, art_id: str) -> Path:
        tmp = self.root / "tmp" / f"{kind}-{art_id[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    # ---- reading ----------------------------------------------------------------------
    def exists(self, kind: str, art_id: str) -> bool:
        """Something is at the artifact's place (complete or not: ``load`` tells)."""
        path = self.artifact_dir(kind, art_id)
        return path.exists() or path.is_symlink()

    def has(self, kind: str, art_id: str) -> bool:
        """A complete, verified artifact is there."""
        return self.exists(kind, art_id) and not self.problems(kind, art_id)

    def problems(self, kind: str, art_id: str) -> list[str]:
        """Everything wrong with the artifact's folder; empty when it verifies completely."""
        folder = self.artifact_dir(kind, art_id)
        if folder.is_symlink() or not folder.is_dir():
            return [f"{folder}: not a folder"]
        files, links = listing(folder)
        problems = [
            f"{folder / rel}: is a symlink (artifacts hold plain files only)" for rel in links
        ]
        seal = read_json_or_none(folder / SEAL_FILE)
        if not isinstance(seal, dict) or not isinstance(seal.get("files"), dict):
            return [*problems, f"{folder / SEAL_FILE}: missing or invalid seal"]
        if (seal.get("kind"), seal.get("id")) != (kind, art_id):
            problems.append(f"{folder / SEAL_FILE}: sealed as {seal.get('kind')}/{seal.get('id')}")
        listed: dict[str, str] = seal["files"]
        for rel in sorted(set(files) - set(listed) - {SEAL_FILE}):
            problems.append(f"{folder / rel}: extra file, not in the seal")
        for rel, digest in sorted(listed.items()):
            if rel in links:
                continue
            if rel not in files:
                problems.append(f"{folder / rel}: missing")
            elif sha256_file(files[rel]) != digest:
                problems.append(f"{folder / rel}: sha256 mismatch (edited or truncated)")
        if RECORD_FILE not in listed:
            problems.append(f"{folder / RECORD_FILE}: record not sealed")
        elif not problems:
            record = read_json_or_none(folder / RECORD_FILE)
            if not isinstance(record, dict) or (record.get("kind"), record.get("id")) != (
                kind,
                art_id,
            ):
                problems.append(
                    f"{folder / RECORD_FILE}: record does not belong to {kind}/{art_id}"
                )
        return problems

    def verified(self, kind: str, art_id: str) -> tuple[Artifact | None, list[str]]:
        """The artifact and no problems, or None and its problems: every file is hashed once."""
        problems = self.problems(kind, art_id)
        if problems:
            return None, problems
        path = self.artifact_dir(kind, art_id)
        return Artifact(kind, art_id, path, json.loads((path / RECORD_FILE).read_text())), []

    def get(self, kind: str, art_id: str) -> Artifact:
        """The artifact, verified; raises ``StoreError`` listing the first problem otherwise."""
        artifact, problems = self.verified(kind, art_id)
        if artifact is None:
            raise StoreError(
                f"{problems[0]} (and {len(problems) - 1} more)"
                if len(problems) > 1
                else problems[0]
            )
        return artifact

    def all_ids(self) -> list[tuple[str, str]]:
        """(kind, id) of every folder under artifacts/, complete or not."""
        base = self.root / "artifacts"
        if not base.is_dir():
            return []
        return [
            (k.name, a.name)
            for k in sorted(base.iterdir())
            if k.is_dir()
            for a in sorted(k.iterdir())
        ]

    # ---- writing ----------------------------------------------------------------------
    def commit(self, tmp: Path, *, kind: str, art_id: str, record: dict) -> Artifact:
        """Write the record, seal every file, fsync, and rename into place.

        If another process committed the same id first and its artifact verifies, it wins
        and ``tmp`` is removed. Anything else at that place is quarantined first.
        """
        record = {**record, "id": art_id, "kind": kind, "committed_at": time.time()}
        (tmp / RECORD_FILE).write_text(
            json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        files, links = listing(tmp)
        if links:
            raise StoreError(
                f"{kind} wrote symlinks ({', '.join(links)}); artifacts hold plain files only"
            )
        seal = {
            "kind": kind,
            "id": art_id,
            "files": {rel: sha256_file(p) for rel, p in sorted(files.items())},
        }
        (tmp / SEAL_FILE).write_text(json.dumps(seal, indent=2, sort_keys=True) + "\n")
        for path in [*files.values(), tmp / SEAL_FILE]:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        final = self.artifact_dir(kind, art_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.exists(kind, art_id):
            winner, _ = self.verified(kind, art_id)
            if winner is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return winner
            self.quarantine(kind, art_id)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(self.work_dir(kind, art_id), ignore_errors=True)
        # as sealed: no re-read
        return Artifact(kind, art_id, final, json.loads(json.dumps(record)))

    @contextlib.contextmanager
    def lock(self, kind: str, art_id: str) -> Iterator[None]:
        """An exclusive lock per artifact id, so two runs never compute the same recipe at once."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_dir / f"{kind}-{art_id}.lock"):
            yield

    @contextlib.contextmanager
    def try_lock(self, kind: str, art_id: str) -> Iterator[bool]:
        """The artifact's lock if nobody holds it (True), else False at once: ``gc`` removes only
        what no live run is computing or reading."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_dir / f"{kind}-{art_id}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # ---- the run index: what gc keeps -------------------------------------------------
    def record_run(self, entry: dict) -> None:
        """Append one line to ``runs.jsonl``: a run's start (its ids, report and ship folders) or
        its end (its status). Appended, never rewritten; ``gc`` reads it."""
        with open(self.root / RUN_INDEX, "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def runs(self) -> list[dict]:
        """Every run in the index, oldest first, its end merged into its start. ``StoreError``
        naming the file and line if the index cannot be read."""
        path = self.root / RUN_INDEX
        if not path.exists():
            return []
        runs: dict[str, dict] = {}
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: unreadable run index ({exc})") from None
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                runs.setdefault(entry["run"], {"status": "running"}).update(entry)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise StoreError(
                    f"{path}:{number}: not a run index line; fix or remove that line"
                ) from None
        return sorted(runs.values(), key=lambda r: r.get("started", r["time"]))

    def quarantine(self, kind: str, art_id: str, *, into: str = "quarantine") -> Path:
        """Move a broken artifact aside (kept for inspection, never used again);
        ``into="superseded"``
        for a sound one that ``run --force`` recomputes. ``gc`` removes both."""
        src = self.artifact_dir(kind, art_id)
        dst = self.root / into / f"{kind}-{art_id}-{uuid.uuid4().hex[:8]}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return dst

    def clean_tmp(self, *, older_than_s: float = 0.0) -> int:
        """Remove temporary folders of dead runs (only names this store makes); returns how many."""
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for entry in tmp_root.iterdir():
            match = _TMP_NAME.match(entry.name)
            if match is None or entry.is_symlink():
                continue
            pid = int(match.group(1))
            if (
                pid != os.getpid()
                and not pid_alive(pid)
                and now - entry.stat().st_mtime >= older_than_s
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed
