"""Releases: every lineage keeps its bundle, and ``releases.jsonl`` says how ``latest`` moved.

    shipped/<name>/v<N>/            one sealed bundle per lineage (a different ship artifact: a new version)
    shipped/<name>/latest           -> the champion version
    shipped/<name>/releases.jsonl   one line per move of latest: ship, promote, rollback, repair

A version folder is never rewritten. Every move checks the whole trail first (a torn or foreign
line stops it, exit 2, naming ``releases.jsonl:LINE``), verifies the bundle it moves to, then
points ``latest`` and appends its line in one synced write. ``repair_releases`` sets damaged
lines aside in a file of their own and records that it did.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from foundation.bundle_seal import seal_bundle, verify_bundle
from foundation.errors import ManifestError
from foundation.files import latest_version, read_marker, replace_output_dir
from foundation.records import BundleRecord
from pipeline.history import _lock, check_owned, owned_folder, point_latest

RELEASES = "releases.jsonl"
_VERSION = re.compile(r"^v(\d+)$")


def _versions(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir()}


def planned_version(folder: Path, bundle_key: str) -> Path:
    """Where ``publish_version`` will put the bundle whose model files hash to ``bundle_key``: the
    version that already holds those models (whatever gate or champion let them ship), or the next."""
    versions = _versions(folder)
    for _, path in sorted(versions.items(), reverse=True):
        marker = read_marker(path) or {}
        if bundle_key in (marker.get("bundle_key"), marker.get("ship_artifact")):
            return path
    return folder / f"v{max(versions, default=0) + 1}"


ACTIONS = ("ship", "promote", "rollback", "repair")


def _append_release(folder: Path, *, action: str, source: str | None, target: str, why: str,
                    run: str | None = None, gate: dict | None = None) -> None:
    """One line of ``releases.jsonl``, the audit trail of ``latest``: appended in one write (never
    rewritten), and synced before the caller goes on."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "from": source,
            "to": target, "why": why, "run": run, "gate": gate}
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    fd = os.open(folder / RELEASES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{folder / RELEASES}: short write")
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_latest(folder: Path, target: str, **record) -> bool:
    """Point ``latest`` at ``target`` and record the move; False when it was there already. The
    trail is checked first: a damaged one stops the move (exit 2), so ``latest`` and the trail
    never part."""
    release_history(folder)
    before = latest_version(folder)
    if before == target:
        return False
    point_latest(folder, target)
    _append_release(folder, source=before, target=target, **record)
    return True


def _top1(folder: Path, version: str) -> str:
    """``ONNX top-1 98.33`` from a version's verified model card, or why it cannot be read."""
    from foundation.errors import StoreError

    try:
        verify_bundle(folder / version)
        card = json.loads((folder / version / BundleRecord.CARD).read_text())
        return f"ONNX top-1 {card['metrics']['onnx_top1']:.2f}"
    except StoreError as exc:  # "<path>: <what> (<detail>): <fix>" -> "unverified: <file> <what>"
        path, _, what = str(exc).partition(": ")
        return f"unverified: {Path(path).name} {what.split(' (')[0].split(':')[0]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "no ONNX top-1 in its card"


def ship_reason(folder: Path, target: str, *, rules: list[str], skipped: list[str], top1: float | None) -> str:
    """What happened when ``target`` ships, from what ran: the rules that ran, those skipped (and
    why), and the version it replaces with both figures. The report's verdict line and the
    release record say this same sentence."""
    before = latest_version(folder)
    parts = [f"the gate passed: {len(rules)} rules ran"] + skipped
    new = f"{target} (ONNX top-1 {top1:.2f})" if top1 is not None else target
    if before is None:
        parts.append(f"{new} is the first version of this name")
    elif before == target:
        parts.append(f"{target} was already latest")
    else:
        parts.append(f"replaced {before} ({_top1(folder, before)}) with {new}")
    return "; ".join(parts)


def publish_version(folder: Path, bundle_key: str, fill: Callable[[Path], None], *, marker: dict, run: str,
                    gate: dict, why: str) -> tuple[Path, bool]:
    """The bundle as ``v<N>``: the existing version when these models shipped before, else a new one
    (a version folder is never rewritten). It becomes ``latest``, recorded in ``releases.jsonl``.
    Returns the version folder and whether ``latest`` moved."""
    owned_folder(folder, field="ship.dir", what="shipped bundles")
    with _lock(folder):
        release_history(folder)  # a damaged trail stops the ship before a version is written
        target = planned_version(folder, bundle_key)
        if not target.exists():
            replace_output_dir(target, fill, marker={**marker, "bundle_key": bundle_key}, field="ship.dir",
                               seal=seal_bundle)
        moved = _move_latest(folder, target.name, action="ship", run=run, gate=gate, why=why)
    return target, moved


def _damage(line: str) -> str | None:
    """Why one line of the trail is not a move of ``latest``, or None if it is one."""
    try:
        move = json.loads(line)
    except ValueError:
        return "not a JSON line (a torn write?)"
    if not isinstance(move, dict):
        return "not a JSON object"
    if move.get("action") not in ACTIONS:
        return f"no known action ({', '.join(ACTIONS)})"
    if not isinstance(move.get("to"), str) or not _VERSION.match(move["to"]):
        return "no version it moved latest to"
    return None


def release_history(folder: Path) -> list[dict]:
    """Every move of ``latest``, oldest first. A line that is not a whole move (torn, not JSON, no
    action or version) is ``ManifestError`` (exit 2) naming ``releases.jsonl:LINE`` and the repair."""
    path = folder / RELEASES
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    moves = []
    for number, line in enumerate(text.splitlines(), 1):
        damage = _damage(line)
        if damage is None and number == text.count("\n") + 1:
            damage = "a last line with no newline (a torn write?)"
        if damage:
            raise ManifestError(f"{path}:{number}: {damage}; the release trail is damaged and latest was not moved: "
                                f"`cskd-pipeline releases repair {folder}` sets damaged lines aside, then run again")
        moves.append(json.loads(line))
    return moves


def repair_releases(folder: Path) -> tuple[list[int], Path | None]:
    """Set the trail's damaged lines aside in a new ``releases.damaged-<time>.jsonl`` (never
    deleted), keep the rest, and record the repair as a line of its own. Returns the damaged
    line numbers and where they went (None: nothing was damaged)."""
    check_owned(folder, field="ship.dir")
    path = folder / RELEASES
    if not path.is_file():
        return [], None
    with _lock(folder):
        text = path.read_text(errors="replace")
        lines = text.splitlines()
        damaged = [n for n, line in enumerate(lines, 1)
                   if _damage(line) or (n == len(lines) and not text.endswith("\n"))]
        if not damaged:
            return [], None
        aside = folder / f"releases.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}.jsonl"
        aside.write_text("".join(f"{lines[n - 1]}\n" for n in damaged))
        tmp = folder / f".{RELEASES}.tmp-{os.getpid()}"
        tmp.write_text("".join(f"{line}\n" for n, line in enumerate(lines, 1) if n not in damaged))
        os.replace(tmp, path)
        current = latest_version(folder)
        if current is not None:
            _append_release(folder, action="repair", source=current, target=current,
                            why=f"set aside {len(damaged)} damaged line(s) ({', '.join(f'line {n}' for n in damaged)}) "
                                f"to {aside.name}")
        return damaged, aside


def _version_folder(folder: Path, version: str) -> str:
    name = version if version.startswith("v") else f"v{version}"
    path = folder / name
    if not _VERSION.match(name) or not path.is_dir() or path.is_symlink() or read_marker(path) is None:
        known = ", ".join(sorted(p.name for p in _versions(folder).values()
                                 if not p.is_symlink() and read_marker(p) is not None)) or "none"
        raise ManifestError(f"{path}: no such shipped version (versions: {known})")
    return name


def _shipped_name(folder: Path) -> None:
    """A name with no shipped versions is refused before anything is written (no lock file, no folder)."""
    check_owned(folder, field="ship.dir")
    if not folder.is_dir():
        raise ManifestError(f"{folder}: nothing was shipped under this name; `cskd-pipeline runs` lists the names "
                            f"that ran")


def promote(folder: Path, version: str, *, why: str = "promoted by hand") -> tuple[str | None, str, bool]:
    """Make ``version`` the champion, once its bundle verifies. Returns (previous latest, new
    latest, whether it moved)."""
    _shipped_name(folder)
    target = _version_folder(folder, version)
    with _lock(folder):
        verify_bundle(folder / target)
        before = latest_version(folder)
        return before, target, _move_latest(folder, target, action="promote", why=why)


def rollback(folder: Path, *, why: str = "rolled back by hand") -> tuple[str, str]:
    """``latest`` back to the version that was the champion before the current one became it (each
    ship or promote stacks a version, each rollback takes one off; a repair moves nothing). The
    version rolled back to must verify. Returns (from, to)."""
    _shipped_name(folder)
    with _lock(folder):
        stack: list[str] = []
        for move in release_history(folder):
            if move["action"] == "rollback":
                stack.pop() if stack else None
            elif move["action"] != "repair" and (not stack or stack[-1] != move["to"]):
                stack.append(move["to"])
        current = latest_version(folder)
        if len(stack) < 2 or current is None:
            raise ManifestError(f"{folder}: nothing to roll back to ({RELEASES} records "
                                f"{len(stack)} champion(s)); `cskd-pipeline promote` names a version")
        target = _version_folder(folder, stack[-2])
        verify_bundle(folder / target)
        _move_latest(folder, target, action="rollback", why=why)
        return current, target
