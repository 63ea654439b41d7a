"""What a run shows: every line it prints, also in a log file as it happens; on a terminal, one
rich progress display; and what it made (each stage's report line, the outcome)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from foundation.artifact import Artifact
from foundation.store import ArtifactStore

if TYPE_CHECKING:
    from pipeline.tracking import LiveRun


@dataclass
class StageReport:
    kind: str
    id: str
    status: str  # "ran" or "cached"
    wall_s: float
    headline: str

    def line(self) -> str:
        return f"[{self.kind:<8}] {self.status:<6} {self.wall_s:7.1f}s  {self.id[:12]}  {self.headline}"


@dataclass
class RunOutcome:
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    reports: list[StageReport] = field(default_factory=list)
    report_dir: Path | None = None
    shipped: Path | None = None
    live: LiveRun | None = None  # the MLflow run, when tracking is configured



class RunLog:
    """Every line a run prints, also appended to ``<store>/logs/<name>-<time>.log`` as it happens
    (``tail -f`` it); the report folder gets a copy as ``run.log``."""

    def __init__(self, store: ArtifactStore, name: str, echo: Callable[[str], None], *, quiet: bool):
        self.path = store.root / "logs" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo, self.quiet = echo, quiet

    def __call__(self, line: str, *, detail: bool = False) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if not (detail and self.quiet):
            self.echo(line)

    def detail(self, line: str) -> None:
        """A per-epoch line: in the log always, on screen unless quiet."""
        self(line, detail=True)


@contextlib.contextmanager
def progress_display(progress: bool):
    """On a terminal: one rich display, an overall line per run and the stages' own bars. Lines the
    run prints go above it."""
    if not progress:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description:<40}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as display:
        yield display
