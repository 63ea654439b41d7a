"""``cskd-pipeline gc``: remove what nothing needs from the store, and never what something does.

What is kept, from the store's own index of runs (``runs.jsonl``), whatever report folder a run
wrote to:
- every artifact in the lineage of every shipped version (each bundle's model card lists its
  artifact ids), in every ship folder the index names;
- the artifacts of the latest *passing* run of every manifest;
- those of the latest run of every manifest, failed or not, unless ``drop_failed``;
- artifacts committed before the index's first run (made by a version without the index);
- anything whose lock is held: a live run is computing or reading it (skipped, not waited for).

An unreadable index or model card stops gc before anything is removed. A symbolic link inside the
store is unlinked, never followed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundation.bundle_seal import SUMS, verify_bundle
from foundation.environment import pid_alive
from foundation.errors import ManifestError, StoreError
from foundation.files import read_marker
from foundation.records import BundleRecord
from foundation.store import RECORD_FILE, ArtifactStore

_VERSION = re.compile(r"^v\d+$")
SCRATCH = ("quarantine", "superseded")  # set aside by the store: nothing reads them again


@dataclass
class Plan:
    keep: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, id) -> why
    remove: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)  # locked by a live run


def _card_lineage(ship_dir: Path) -> dict[tuple[str, str], str]:
    keep = {}
    if not ship_dir.is_dir():
        return keep
    for version in sorted(p for p in ship_dir.iterdir() if _VERSION.match(p.name) and p.is_dir()):
        if version.is_symlink() or read_marker(version) is None:
            continue
        card = version / BundleRecord.CARD
        if (version / SUMS).exists():  # sealed: its card is read only once the bundle verifies
            try:
                verify_bundle(version)
            except StoreError as exc:
                raise StoreError(f"{exc}; gc removed nothing") from None
        try:
            artifacts = json.loads(card.read_text())["artifacts"]
            pairs = [(str(kind), str(art_id)) for kind, art_id in artifacts.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{card}: unreadable model card ({type(exc).__name__}); gc removed nothing. "
                                f"Restore the file, or `cskd-pipeline bundle verify {version}`") from None
        keep.update({pair: f"shipped {ship_dir.name}/{version.name}" for pair in pairs})
    return keep


def _kept(store: ArtifactStore, *, drop_failed: bool) -> dict[tuple[str, str], str]:
    # StoreError (exit 4 at the CLI) if unreadable: raised before anything goes. A run whose start line
    # is missing (only its end was written) names nothing to keep.
    runs = [r for r in store.runs() if "manifest" in r and "ids" in r]
    keep: dict[tuple[str, str], str] = {}
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["manifest"], []).append(run)
    for run in runs:  # a run still going (its process alive on this machine) keeps everything it plans
        if run["status"] == "running" and run.get("host") == socket.gethostname() \
                and isinstance(run.get("pid"), int) and pid_alive(run["pid"]):
            keep.update({(k, i): f"running now ({run['run']})" for k, i in run["ids"].items()})
    for name, mine in by_name.items():
        passing = [r for r in mine if r["status"] == "passed"]
        chosen = ([(passing[-1], "latest passing run")] if passing else []) + \
                 ([] if drop_failed else [(mine[-1], "latest run")])
        for run, why in chosen:
            keep.update({(k, i): f"{why} of {name} ({run['run']})" for k, i in run["ids"].items()})
    for ship_dir in dict.fromkeys(Path(r["ship_dir"]) for r in runs):
        keep.update(_card_lineage(ship_dir))
    first = min((r.get("started", r["time"]) for r in runs), default=float("inf"))
    for kind, art_id in store.all_ids():  # made before the index existed: nothing says what uses them
        record = store.artifact_dir(kind, art_id) / RECORD_FILE
        try:
            committed = json.loads(record.read_text()).get("committed_at", 0.0) if not record.is_symlink() else None
        except (OSError, ValueError, AttributeError):
            committed = None
        if committed is not None and committed < first:
            keep.setdefault((kind, art_id), "made before the run index")
    return keep


def plan_gc(store: ArtifactStore, *, drop_failed: bool = False) -> Plan:
    """What gc would keep and remove; nothing is touched."""
    plan = Plan(keep=_kept(store, drop_failed=drop_failed))
    base = store.root / "artifacts"
    for kind_dir in sorted(base.iterdir()) if base.is_dir() else []:
        if kind_dir.is_symlink():
            plan.remove.append(kind_dir)
            continue
        for folder in sorted(kind_dir.iterdir()) if kind_dir.is_dir() else []:
            if folder.is_symlink() or (kind_dir.name, folder.name) not in plan.keep:
                plan.remove.append(folder)
    for part in SCRATCH:
        folder = store.root / part
        plan.remove.extend(sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else [])
    work = store.root / "work"
    kept_work = {f"{k}-{i}" for k, i in plan.keep}
    for folder in sorted(work.iterdir()) if work.is_dir() and not work.is_symlink() else []:
        if folder.name not in kept_work:
            plan.remove.append(folder)
    return plan


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


def _lock_key(store: ArtifactStore, path: Path) -> tuple[str, str] | None:
    """The artifact a folder belongs to: its own lock guards it (artifacts/<kind>/<id>, work/<kind>-<id>)."""
    if path.parent.parent == store.root / "artifacts":
        return path.parent.name, path.name
    if path.parent == store.root / "work" and "-" in path.name:
        kind, _, art_id = path.name.rpartition("-")
        return kind, art_id
    return None


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        os.unlink(path)  # a link is removed itself: what it points at is never touched
    else:
        shutil.rmtree(path)


def collect(store: ArtifactStore, plan: Plan, *, really: bool, echo: Callable[[str], None]) -> int:
    """Remove (or with ``really=False`` list) ``plan.remove``; returns the bytes reclaimed. A folder
    whose artifact lock is held by a live run is skipped and listed as busy."""
    reclaimed = 0
    for path in plan.remove:
        key = _lock_key(store, path) if not path.is_symlink() else None
        size = _size(path)
        if key is None:
            echo(f"{'removing' if really else 'would remove'} {path}")
            if really:
                _remove(path)
            reclaimed += size
            continue
        with store.try_lock(*key) as free:
            if not free:
                plan.busy.append(path)
                echo(f"keeping {path} (in use by a running pipeline)")
                continue
            echo(f"{'removing' if really else 'would remove'} {path}")
            if really:
                _remove(path)
            reclaimed += size
    return reclaimed


__all__ = ["Plan", "plan_gc", "collect", "StoreError"]
