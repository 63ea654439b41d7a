"""Run history: every run keeps its report (``pipeline.releases``: every lineage keeps its bundle).

    reports/<name>/runs/<run-id>/   report.json, report.html, run.log of one run
    reports/<name>/latest           -> runs/<newest run-id>

The ``<name>`` folders carry the pipeline's marker: a folder there that the
pipeline did not make is refused, never written into. ``latest`` is replaced
with an atomic rename of a new symlink, so readers never see it missing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from exports.latency import within_noise
from foundation.errors import ManifestError
from foundation.files import (
    LATEST,
    OUTPUT_MARKER,
    check_replaceable,
    read_marker,
    replace_output_dir,
)

RUNS = "runs"


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs: ``20261128T031500.042Z-1a2b3c``. The
    milliseconds keep two runs of one second in order (a run that recomputes nothing takes less)."""
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z-{uuid.uuid4().hex[:6]}"


# What versions before markers wrote into reports/<name>/ and shipped/<name>/: a folder holding
# only these files (and nothing else) was made by this pipeline and is adopted, not refused.
_UNMARKED_OUTPUTS = {"report.json", "report.html", "model_card.json", "student.onnx", "student.safetensors",
                     "student_int8.onnx", "student_fp16.onnx", "student.engine", "student.json"}


def _made_before_markers(folder: Path) -> bool:
    entries = list(folder.iterdir())
    return bool(entries) and {p.name for p in entries} <= _UNMARKED_OUTPUTS and all(
        p.is_file() and not p.is_symlink() for p in entries)


def check_owned(folder: Path, *, field: str) -> None:
    """Raise ``OutputError`` unless ``folder`` is absent, marked by the pipeline, or an output
    folder of an earlier version (only files it wrote). Called before any compute."""
    if folder.is_dir() and not folder.is_symlink() and read_marker(folder) is None and _made_before_markers(folder):
        return
    check_replaceable(folder, field=field)


def write_pages(folder: Path, pages: dict[str, str]) -> None:
    """Each page (file name -> text) into a report folder of the pipeline's (made or adopted, never a
    user's), each replaced atomically: a reader sees the old page or the new one, never half."""
    owned_folder(folder, field="report.dir", what="run reports")
    for name, text in pages.items():
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, folder / name)


def owned_folder(folder: Path, *, field: str, what: str) -> Path:
    """``folder``, made (or adopted) with the pipeline's marker; refused if someone else's."""
    check_owned(folder, field=field)
    if not (folder / OUTPUT_MARKER).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OUTPUT_MARKER).write_text(json.dumps({"made_by": "cskd-pipeline", "what": what}, indent=2) + "\n")
    return folder


def point_latest(folder: Path, target: str) -> None:
    tmp = folder / f".{LATEST}-{uuid.uuid4().hex[:6]}"
    os.symlink(target, tmp)
    os.replace(tmp, folder / LATEST)


def _lock(folder: Path):
    """Runs of the same name take turns choosing a version and moving ``latest``."""
    from filelock import FileLock

    return FileLock(folder / ".lock")


def write_run(folder: Path, run_id: str, fill: Callable[[Path], None], *, marker: dict) -> Path:
    """A new ``runs/<run_id>/`` under ``folder``; ``latest`` then points at it."""
    owned_folder(folder, field="report.dir", what="run reports")
    with _lock(folder):
        final = replace_output_dir(folder / RUNS / run_id, fill, marker={**marker, "run": run_id}, field="report.dir")
        point_latest(folder, f"{RUNS}/{run_id}")
    return final


# ---- reading the history --------------------------------------------------------------
def read_report(path: Path) -> dict:
    """A run's report.json, checked for what the history reads; ``ManifestError`` (exit 2) naming
    the file when it is unreadable or incomplete."""
    try:
        report = json.loads(path.read_text())
        metrics = report["metrics"]
        row = {"teacher_top1": float(metrics["teacher_top1"]), "student_top1": float(metrics["student_top1"]),
               "passed": bool(report["gate"]["passed"]), "manifest": dict(report["manifest"])}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable report ({type(exc).__name__}: {exc})") from None
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: an incomplete report (no {exc}); it was not written by a finished run") from None
    return {**report, "_row": row}


def _run_folders(report_root: Path, name: str | None) -> list[tuple[str, Path]]:
    names = [name] if name else sorted(p.name for p in report_root.iterdir() if p.is_dir()) if report_root.is_dir() else []
    return [(n, run) for n in names for run in (sorted((report_root / n / RUNS).iterdir())
                                                if (report_root / n / RUNS).is_dir() else [])
            if (run / "report.json").is_file()]


def list_runs(report_root: Path, name: str | None = None, *,
              warn: Callable[[str], None] = lambda line: None) -> list[dict]:
    """Every recorded run (oldest first): id, name, its report.json path and headline figures.
    A run whose report is unreadable or incomplete is skipped, with one ``warn`` line naming it."""
    rows = []
    for n, run in _run_folders(report_root, name):
        path = run / "report.json"
        try:
            report = read_report(path)
        except ManifestError as exc:
            warn(f"warning: skipped {exc}")
            continue
        row = report["_row"]
        release = (report.get("run") or {}).get("release") or {}
        int8 = ((report.get("metrics") or {}).get("models") or {}).get("onnx-int8") or {}
        rows.append({"run": run.name, "name": n, "report": str(path), "teacher_top1": row["teacher_top1"],
                     "student_top1": row["student_top1"], "int8_top1": int8.get("top1"),
                     "gate": "PASS" if row["passed"] else "FAIL",
                     "shipped": release.get("version"), "became_latest": bool(release.get("latest")),
                     "overrides": (report.get("run") or {}).get("overrides") or [],
                     "duration_s": (report.get("run") or {}).get("duration_s")})
    return sorted(rows, key=lambda r: r["run"])


def find_run(report_root: Path, run_id: str) -> dict:
    """The report of the run ``run_id`` (or a unique prefix); ``ManifestError`` if there is no such
    run, several match, or its report cannot be read."""
    folders = _run_folders(report_root, None)
    matches = [run for _, run in folders if run.name == run_id or run.name.startswith(run_id)]
    if len(matches) != 1:
        known = ", ".join(sorted(run.name for _, run in folders)[-5:]) or "none yet"
        raise ManifestError(f"run {run_id!r}: {'no such run' if not matches else 'ambiguous'} under {report_root} "
                            f"(latest: {known}); see `cskd-pipeline runs`")
    report = read_report(matches[0] / "report.json")
    report.pop("_row")
    if not isinstance(report.get("run"), dict):
        report["run"] = {}
    report["run"].setdefault("id", matches[0].name)
    return report


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _comparable(report: dict) -> dict[str, object]:
    """Everything a diff compares, flat: the manifest, the overrides, every model's test metrics
    (each exported file's too), the INT8 stage's figures, each file's p50 per batch size and the
    gate's rules. Per-class lists are left out (the report shows them)."""
    latency = (report.get("latency") or {}).get("results") or []
    flat = {**{f"manifest.{k}": v for k, v in flatten(report.get("manifest") or {}).items()},
            "run.overrides": " ".join((report.get("run") or {}).get("overrides") or []) or None,
            **{f"metrics.{k}": v for k, v in flatten(report.get("metrics") or {}).items()},
            **{f"quantization.{k}": v for k, v in flatten(report.get("quantization") or {}).items()},
            **{f"latency.{c['backend']}.batch{c['batch']}.p50_ms": c["p50_ms"] for c in latency},
            **{f"gate.{r['rule']}": r["passed"] for r in (report.get("gate") or {}).get("rules", [])},
            "gate.passed": (report.get("gate") or {}).get("passed")}
    return {k: v for k, v in flat.items() if not isinstance(v, list)}


class DiffRow(NamedTuple):
    key: str
    left: object
    right: object
    change: str  # b - a for numbers (and the relative change of a latency), else "changed"; "" when equal
    noise: bool  # a latency that moved less than its rounds spread: not a change


def diff_runs(a: dict, b: dict, *, everything: bool = False) -> list[DiffRow]:
    """Every setting and metric that differs between two runs; a latency whose round ranges overlap
    in the two runs moved within its noise and counts as unchanged. ``everything``: every row."""
    flat_a, flat_b = _comparable(a), _comparable(b)
    cells_a, cells_b = _latency_cells(a), _latency_cells(b)
    rows = []
    for key in sorted(set(flat_a) | set(flat_b)):
        left, right = flat_a.get(key), flat_b.get(key)
        noise = left != right and key in cells_a and key in cells_b and within_noise(cells_a[key], cells_b[key])
        if everything or (left != right and not noise):
            rows.append(DiffRow(key, left, right, _change(key, left, right), noise))
    return rows


def _latency_cells(report: dict) -> dict[str, dict]:
    return {f"latency.{c['backend']}.batch{c['batch']}.p50_ms": c
            for c in (report.get("latency") or {}).get("results") or []}


def _change(key: str, left: object, right: object) -> str:
    if left == right:
        return ""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    if not numbers:
        return "changed"
    change = f"{right - left:+.2f}"
    return change + (f" ({(right / left - 1) * 100:+.0f}%)" if key.startswith("latency.") and left else "")
