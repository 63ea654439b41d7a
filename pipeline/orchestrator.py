"""Run a manifest's planned stage graph (``planner.py``) against the store.

``run_pipeline`` reuses every artifact that verifies completely, quarantines and
recomputes any that does not (a forged verdict is recomputed, never trusted),
commits each new one atomically, writes the report, and publishes the bundle
only when the gate passed. This module imports no concrete stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import stages  # noqa: F401 - registers every stage and back-end
from cskd.interrupts import Interrupted
from foundation.artifact import Artifact
from foundation.contracts import Inputs, StageContext, recipe
from foundation.environment import environment
from foundation.errors import GateFailed, ManifestError, OutputError
from foundation.files import confined, latest_version
from foundation.manifest import Manifest
from foundation.records import (
    BundleRecord,
    Found,
    ValidationRecord,
    VerdictRecord,
    checked,
    find,
    kind_of,
    need,
    reread,
)
from foundation.store import ArtifactStore
from pipeline.history import check_owned, new_run_id
from pipeline.planner import PlannedStage, check_inputs, on_demand, plan  # noqa: F401 - re-exported
from pipeline.releases import planned_version, publish_version, ship_reason
from pipeline.run_output import RunLog, RunOutcome, StageReport, progress_display
from pipeline.tracking import LiveRun, track


def output_folders(manifest: Manifest) -> dict[str, Path]:
    """The store and the report and ship folders, resolved (symlinks followed) and checked to
    stay inside the working directory and apart from one another. Raises ``OutputError``."""
    places = {"store": confined(manifest.store, field="store"),
              "report.dir": confined(Path(manifest.report.dir) / manifest.name, field="report.dir"),
              "ship.dir": confined(Path(manifest.ship.dir) / manifest.name, field="ship.dir")}
    names = list(places)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if places[a].is_relative_to(places[b]) or places[b].is_relative_to(places[a]):
                raise OutputError(f"{a} ({places[a]}) and {b} ({places[b]}) overlap once symlinks are "
                                  f"followed; give each its own folder")
    for name in ("report.dir", "ship.dir"):  # refuse before any compute, not after hours of training
        check_owned(places[name], field=name)
    return places




def _usable(store: ArtifactStore, step: PlannedStage, echo: Callable[[str], None]) -> Artifact | None:
    """The verified artifact, or None after moving anything broken at its place aside."""
    if not store.exists(step.kind, step.id):
        return None
    artifact, problems = store.verified(step.kind, step.id)
    if artifact is not None:
        return artifact
    moved = store.quarantine(step.kind, step.id)
    echo(f"[{step.kind:<8}] artifact failed verification ({problems[0]}); moved to {moved}, recomputing")
    return None


def _compute(store: ArtifactStore, step: PlannedStage, inputs: Mapping[str, Artifact], progress: object,
             log: Callable[[str], None]) -> Artifact:
    tmp = store.new_tmp_dir(step.kind, step.id)
    try:
        ctx = StageContext(out_dir=tmp, work_dir=store.work_dir(step.kind, step.id), cache_dir=store.root / "cache",
                           inputs=inputs, progress=progress, log=log)
        started = time.perf_counter()
        result = step.stage.run(step.config, ctx)
        checked(step.kind, step.stage.Record, result.metrics)  # what the layer above reads is what the stage declared
        record = {"version": step.stage.version, "config": recipe(step.config), "inputs": step.inputs,
                  "metrics": result.metrics, "headline": result.headline, "environment": environment(),
                  "wall_s": round(time.perf_counter() - started, 3), **result.extra}
        return store.commit(tmp, kind=step.kind, art_id=step.id, record=record)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_pipeline(manifest: Manifest, *, until: str | None = None, progress: bool = True, quiet: bool = False,
                 force: tuple[str, ...] = (), verbose: bool = False, echo: Callable[[str], None] = print) -> RunOutcome:
    """Run every stage (or those ``until`` needs). Raises ``GateFailed`` on a failing gate.

    ``progress``: progress bars (a terminal); ``quiet``: no per-epoch lines on screen (the log keeps them).
    """
    folders = output_folders(manifest)
    store = ArtifactStore(manifest.store)
    steps = plan(manifest, until=until)
    unknown = sorted(set(force) - {s.kind for s in steps})
    if unknown:
        raise ManifestError(f"--force {unknown[0]}: not a stage of this plan; stages: {', '.join(s.kind for s in steps)}")
    forced = set(force)
    for step in steps:  # a forced stage's dependents are recomputed too: they read its new result
        if set(step.inputs) & forced:
            forced.add(step.kind)
    store.claim()
    log = RunLog(store, manifest.name, echo, quiet=quiet)
    if (line := manifest.export.auto_line()) is not None:
        log(line)
    if manifest.distributed.node_rank != 0:
        return _follow(store, steps, log, node=manifest.distributed.node_rank)
    run = {"id": new_run_id(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "overrides": list(manifest._overrides)}
    clock = time.perf_counter()
    for step in steps:  # fail before any compute if a back-end or device is missing (verified later, once)
        if not store.exists(step.kind, step.id):
            step.stage.preflight(step.config)
    store.clean_tmp()
    # The store's own index of runs: gc keeps what the runs in it use, whatever report folder they wrote to.
    store.record_run({"run": run["id"], "manifest": manifest.name, "started": time.time(), "until": until,
                      "pid": os.getpid(), "host": socket.gethostname(),
                      # as the manifest says, relative to the working folder: a store copied or moved with
                      # its working folder keeps finding them
                      "ids": {s.kind: s.id for s in steps}, "report_dir": f"{manifest.report.dir}/{manifest.name}",
                      "ship_dir": f"{manifest.ship.dir}/{manifest.name}"})
    outcome = RunOutcome(live=LiveRun.open(manifest, run, log))
    status = "error"
    try:
        with outcome.live or contextlib.nullcontext(), progress_display(progress) as display:
            _run_steps(store, steps, outcome, forced, display, log, verbose=verbose)
            if until is None:
                _finish(manifest, store, outcome, folders, run, clock, log)
        status = "partial" if until is not None else "passed"
    except GateFailed:
        status = "failed"
        raise
    except (Interrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        store.record_run({"run": run["id"], "status": status})
        if outcome.live is not None:
            outcome.live.end(status)
    return outcome


def _units(step: PlannedStage) -> float:
    """A stage's share of the overall line: its epochs for a training stage, else one (the rest is
    quick next to training), so the line's time remaining is the whole run's ETA."""
    train = getattr(step.config, "train", None)
    return float(getattr(train, "epochs", 0) or 0) or 1.0


def _run_steps(store: ArtifactStore, steps: list[PlannedStage], outcome: RunOutcome, forced: set[str], display,
               log: RunLog, *, verbose: bool = False) -> None:
    deferred = on_demand(steps)
    by_kind = {step.kind: step for step in steps}
    overall = display.add_task("pipeline", total=sum(_units(s) for s in steps if s.kind not in deferred),
                               overall=True) if display else None

    def obtain(step: PlannedStage) -> Artifact:
        """The step's verified artifact from the store, or computed and committed now."""
        if verbose:
            log(f"[{step.kind:<8}] {step.id} recipe {json.dumps(recipe(step.config), sort_keys=True)} "
                f"inputs {json.dumps({k: v[:12] for k, v in step.inputs.items()})}")
        started = time.perf_counter()
        with store.lock(step.kind, step.id):  # a concurrent run of the same recipe waits, then reuses
            if step.kind in forced and store.exists(step.kind, step.id):
                store.quarantine(step.kind, step.id, into="superseded")
            artifact = _usable(store, step, log)
            status = "cached"
            if artifact is None:
                inputs = Inputs(step.inputs, outcome.artifacts, lambda kind: obtain(by_kind[kind]))
                artifact, status = _compute(store, step, inputs, display or False, log.detail), "ran"
        report = StageReport(step.kind, step.id, status, time.perf_counter() - started,
                             artifact.record.get("headline", ""))
        outcome.artifacts[step.kind] = artifact
        outcome.reports.append(report)
        log(report.line())
        if outcome.live is not None:
            outcome.live.stage(step.kind, status, report.wall_s, report.headline)
        return artifact

    done = 0.0
    for number, step in enumerate(steps, 1):
        if step.kind in deferred:
            continue  # made when a reader asks for it
        if display:
            display.update(overall, description=f"stage {number:>2}/{len(steps)}: {step.kind:<14}")
        if step.kind == kind_of(BundleRecord) and not need(outcome.artifacts, VerdictRecord).record.passed:
            break  # the report below says why; nothing ships
        obtain(step)
        if display:  # training advanced it epoch by epoch; a cached or resumed stage jumps to its end
            done += _units(step)
            display.update(overall, completed=done)


# How long a node other than 0 waits for node 0 to commit what they trained together.
FOLLOWER_WAIT_S = 6 * 3600


def _follow(store: ArtifactStore, steps: list[PlannedStage], log: RunLog, *, node: int) -> RunOutcome:
    """Node ``node`` > 0 of a multi-node run: train with node 0 in every training stage, let node
    0 commit, export, validate and ship (the store is on a file system every node sees), and
    stop after the last training stage."""
    outcome = RunOutcome()
    training = [i for i, step in enumerate(steps) if step.stage.every_node]
    for step in steps[:training[-1] + 1] if training else []:
        started, status = time.perf_counter(), "cached"
        if step.stage.every_node and not store.exists(step.kind, step.id):
            tmp = store.new_tmp_dir(step.kind, step.id)  # this node's copy of the weights; node 0 commits its own
            try:
                inputs = {kind: outcome.artifacts[kind] for kind in step.inputs}
                step.stage.run(step.config, StageContext(out_dir=tmp, work_dir=store.work_dir(step.kind, step.id),
                                                         cache_dir=store.root / "cache", inputs=inputs, log=log.detail))
                status = "trained"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        deadline = time.monotonic() + FOLLOWER_WAIT_S
        while (artifact := _usable(store, step, log)) is None:  # node 0 commits after the last rank finishes
            if time.monotonic() > deadline:
                raise OutputError(f"node {node}: node 0 did not commit {step.kind} {step.id[:12]} within "
                                  f"{FOLLOWER_WAIT_S // 3600} h; is node 0 running with the same manifest and store?")
            time.sleep(1.0)
        outcome.artifacts[step.kind] = artifact
        outcome.reports.append(StageReport(step.kind, step.id, status, time.perf_counter() - started,
                                           f"node {node}; committed by node 0"))
        log(outcome.reports[-1].line())
    return outcome


def _finish(manifest: Manifest, store: ArtifactStore, outcome: RunOutcome, folders: dict[str, Path], run: dict,
            clock: float, echo: RunLog) -> None:
    """Report, gate verdict from the verified record, bundle, tracking."""
    from pipeline.report import write_report

    run.update(duration_s=round(time.perf_counter() - clock, 1), stages_ran=[r.kind for r in outcome.reports
                                                                               if r.status == "ran"])
    gate = reread(store, outcome.artifacts, VerdictRecord)  # the verdict acted on, verified again
    passed = gate.record.passed
    ship = find(outcome.artifacts, BundleRecord)
    bundle = planned_version(folders["ship.dir"], ship.record.bundle_key) if passed and ship else None
    # A run that ships always becomes latest: the champion rule already held (or promote: always).
    run["release"] = {"version": bundle.name if bundle else None, "latest": bundle is not None,
                      "path": os.path.relpath(bundle) if bundle else None,
                      "champion_before": latest_version(folders["ship.dir"])}
    if bundle is not None:  # what the report's verdict line and releases.jsonl say: only what ran
        skipped = ["champion rule skipped (ship.promote: always)"] if manifest.ship.promote == "always" else []
        onnx = (find(outcome.artifacts, ValidationRecord).record.models.get("onnx") or {}).get("top1")
        run["release"].update(rules_skipped=skipped, why=ship_reason(
            folders["ship.dir"], bundle.name, rules=[r["rule"] for r in gate.record.rules], skipped=skipped, top1=onnx))
    outcome.report_dir = write_report(manifest, outcome.artifacts, folders["report.dir"], run=run, log=echo.path,
                                      bundle=bundle)
    if not passed:
        track(manifest, outcome.artifacts, run=run, report_dir=outcome.report_dir, bundle_dir=None,
              live=outcome.live, echo=echo)
        reason = gate.artifact.record.get("headline", "").removeprefix("FAIL: ")
        raise GateFailed(f"gate failed, nothing shipped: {reason} (report: {os.path.relpath(outcome.report_dir)}/report.html)")
    outcome.shipped = publish(store, manifest, outcome, folders["ship.dir"], run=run, gate=gate)
    track(manifest, outcome.artifacts, run=run, report_dir=outcome.report_dir, bundle_dir=outcome.shipped,
          live=outcome.live, echo=echo)


def publish(store: ArtifactStore, manifest: Manifest, outcome: RunOutcome, folder: Path, *, run: dict,
            gate: Found[VerdictRecord]) -> Path:
    """The verified bundle and the run's report as a version under ``<ship.dir>/<name>/``: the
    existing version when these models shipped before, else a new one (never overwritten). The
    bundle's report.html links its files by their names, so the folder works wherever it is copied.
    ``gate``: the verified gate record the caller read (its verdict goes into releases.jsonl)."""
    from pipeline.report import render_html

    bundle = reread(store, outcome.artifacts, BundleRecord)

    def fill(tmp: Path) -> None:
        for name in bundle.record.files:
            shutil.copyfile(bundle.file(name), tmp / name)
        shutil.copyfile(outcome.report_dir / "report.json", tmp / "report.json")
        report = json.loads((tmp / "report.json").read_text())
        (tmp / "report.html").write_text(render_html(report, {name: name for name in bundle.record.files}))

    marker = {"manifest": manifest.name, "what": "shipped bundle", "ship_artifact": bundle.id}
    release = run["release"]
    verdict = {"passed": True, "gate_artifact": gate.id, "rules": [r["rule"] for r in gate.record.rules],
               "skipped": release["rules_skipped"]}
    target, _ = publish_version(folder, bundle.record.bundle_key, fill, marker=marker, run=run["id"],
                                gate=verdict, why=release["why"])
    return target
