"""Run a planned graph against the artifact store: cached stages are reused,
changed ones recomputed, each committed atomically; then gate and ship."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contracts import DataProvider, StageContext
from pipeline.environment import environment
from pipeline.errors import GateFailed
from pipeline.graph import PlannedStage, plan
from pipeline.manifest import Manifest
from pipeline.report import write_report
from pipeline.store import Artifact, ArtifactStore


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


def _usable(store: ArtifactStore, step: PlannedStage, echo: Callable[[str], None]) -> Artifact | None:
    if not store.has(step.kind, step.id):
        return None
    artifact = store.get(step.kind, step.id)
    problems = store.verify(artifact)
    if not problems:
        return artifact
    moved = store.quarantine(step.kind, step.id)
    echo(f"[{step.kind:<8}] corrupt artifact moved to {moved} ({problems[0]}); recomputing")
    return None


def _compute(store: ArtifactStore, step: PlannedStage, manifest: Manifest, data: DataProvider,
             inputs: dict[str, Artifact], progress: bool) -> tuple[Artifact, str]:
    tmp = store.new_tmp_dir(step.kind, step.id)
    try:
        ctx = StageContext(manifest=manifest, out_dir=tmp, work_dir=store.work_dir(step.kind, step.id),
                           cache_dir=store.root / "cache", inputs=inputs, data=data, progress=progress)
        started = time.perf_counter()
        result = step.stage.run(ctx)
        record = {
            "version": step.stage.version, "config": step.config, "inputs": step.inputs,
            "metrics": result.metrics, "headline": result.headline, "environment": environment(),
            "wall_s": round(time.perf_counter() - started, 3), **result.extra,
        }
        return store.commit(tmp, kind=step.kind, art_id=step.id, record=record), result.headline
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_pipeline(manifest: Manifest, *, until: str | None = None, progress: bool = True,
                 echo: Callable[[str], None] = print) -> RunOutcome:
    """Run every stage (or up to and including ``until``). Raises ``GateFailed`` on a failing gate."""
    store = ArtifactStore(manifest.store)
    steps = plan(manifest)
    if until is not None:
        steps = steps[: [s.kind for s in steps].index(until) + 1]
    for step in steps:  # fail before any compute if a back-end or device is missing
        if not store.has(step.kind, step.id):
            step.stage.preflight(manifest)
    store.clean_tmp()
    data = DataProvider(manifest)
    outcome = RunOutcome()
    for step in steps:
        started = time.perf_counter()
        with store.lock(step.kind, step.id):  # a concurrent run of the same recipe waits, then reuses
            artifact = _usable(store, step, echo)
            status = "cached"
            if artifact is None:
                inputs = {kind: outcome.artifacts[kind] for kind in step.inputs}
                artifact, _ = _compute(store, step, manifest, data, inputs, progress)
                status = "ran"
        report = StageReport(step.kind, step.id, status, time.perf_counter() - started,
                             artifact.record.get("headline", ""))
        outcome.artifacts[step.kind] = artifact
        outcome.reports.append(report)
        echo(report.line())
        if step.kind == until:
            return outcome
    outcome.report_dir = write_report(manifest, outcome.artifacts, data.describe())
    verdict = outcome.artifacts["gate"].metrics
    if not verdict["passed"]:
        failed = [r for r in verdict["rules"] if not r["passed"]]
        raise GateFailed("gate failed, nothing shipped: " + "; ".join(
            f"{r['rule']}: measured {r['measured']:.2f}, needs {'<=' if r.get('direction') == 'at_most' else '>='} "
            f"{r['threshold']:.2f}" for r in failed) + f" (report: {outcome.report_dir}/report.html)")
    return outcome
