"""``cskd-pipeline search``: which student, in which precision, is the most accurate one that meets
the deployment budget on this machine.

The manifest's ``search:`` section lists candidate students and a budget (p90 latency at a batch
size, optionally a file size). Every candidate shares the manifest's teacher (trained once, first).
The search then

1. **probes** each candidate before it trains: its untrained network is exported to every target
   of ``export.targets`` that can be built without training (the back-end's ``probe``) and timed at
   the budget's batch. Latency does not depend on the weights, so a candidate whose files all miss
   the budget (by more than ``prescreen_slack``) is dropped here, at the cost of an export;
2. **trains** the rest as cells of the study's launchers (here, ``--jobs`` local processes, or
   Slurm through submitit), each cell the manifest with ``student.model`` (and the candidate's
   ``train`` settings) replaced, run up to validation and cached in the store like any run. With
   ``search.halving``, Optuna's SuccessiveHalvingPruner stops the weaker candidates at shorter
   rungs first;
3. **times** each trained candidate's files through the latency stage, one candidate after another
   in this process (never beside a training cell), and validates every file on the test split;
4. **chooses** the most accurate file (test top-1 of the deployed file) within the budget, and
   ships it as a normal run: the gate (teacher rule, champion rule, and the budget as its latency
   rule) decides, and the model card names the search.

``reports/<name>/search.json`` and ``search.html`` hold every candidate and precision as a point
of the Pareto front of top-1 against p90 latency, and why each one was dropped or not chosen.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from foundation.errors import EXIT_GATE_FAILED, ManifestError, PipelineError
from foundation.manifest import Manifest
from foundation.search_section import Candidate
from pipeline.search_cells import (
    SearchCell,
    SearchRequest,
    candidate_manifest,
    cells,
    full_epochs,
    halve,
)
from pipeline.search_probe import probe
from pipeline.study_launch import check_launcher


class BudgetNotMet(PipelineError):
    """No candidate's file meets the budget: exit 1, as a failed gate."""

    exit_code = EXIT_GATE_FAILED


def _points(base: Manifest, candidate: Candidate, echo: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Each exported file of a trained candidate: its test top-1, p90 at the budget's batch and size."""
    from foundation.backends import backend
    from foundation.records import (
        LatencyRecord,
        StudentRecord,
        TeacherRecord,
        ValidationRecord,
        kind_of,
        need,
    )
    from pipeline.orchestrator import run_pipeline

    manifest = candidate_manifest(base, candidate)
    validated, outcome = (run_pipeline(manifest, until=kind_of(record), progress=False, quiet=True,
                                       echo=lambda _: None) for record in (ValidationRecord, LatencyRecord))
    validation, latency = need(validated.artifacts, ValidationRecord), need(outcome.artifacts, LatencyRecord)
    student = need(outcome.artifacts, StudentRecord)
    budget = base.search.budget
    p90 = {c["backend"]: c["p90_ms"] for c in latency.record.results if c["batch"] == budget.latency.batch}
    student_top1 = validation.record.student_top1
    points = []
    for target in manifest.export.targets:
        spec = backend(target)
        artifact = outcome.artifacts[spec.kind]
        size = sum(artifact.file(name).stat().st_size for name in spec.shipped.values()) / 1e6
        top1 = validation.record.models[target]["top1"]
        why = []
        if p90[target] > budget.latency.max_p90_ms:
            why.append(f"p90 {p90[target]:.3g} ms > {budget.latency.max_p90_ms:g} ms")
        if budget.max_size_mb is not None and size > budget.max_size_mb:
            why.append(f"{size:.2f} MB > {budget.max_size_mb:g} MB")
        allowed = spec.budget(manifest.export) if spec.budget else None
        if allowed is not None and student_top1 - top1 > allowed:
            why.append(f"loses {student_top1 - top1:.2f} points to the float student (budget {allowed:g})")
        points.append({"candidate": candidate.name, "model": candidate.model, "target": target,
                       "top1": round(top1, 3), "p90_ms": round(p90[target], 4), "size_mb": round(size, 3),
                       "within_budget": not why, "why": "; ".join(why)})
    teacher = kind_of(TeacherRecord)  # trained by the search itself, first: not the candidate's
    cached = all(r.status == "cached" for run in (validated, outcome) for r in run.reports if r.kind != teacher)
    echo(f"timed {candidate.name:<16} " + ", ".join(f"{p['target']} {p['top1']:.2f}% {p['p90_ms']:.3g} ms"
                                                      for p in points) + ("  (cached)" if cached else ""))
    return points, {"distill_id": student.artifact.id, "parameters": student.record.parameters,
                    "student_top1": student_top1, "teacher_top1": validation.record.teacher_top1, "cached": cached}


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on every axis (top-1 higher, p90 and size lower), best-first."""
    def beats(a: dict, b: dict) -> bool:
        no_worse = a["top1"] >= b["top1"] and a["p90_ms"] <= b["p90_ms"] and a["size_mb"] <= b["size_mb"]
        return no_worse and (a["top1"], -a["p90_ms"], -a["size_mb"]) != (b["top1"], -b["p90_ms"], -b["size_mb"])

    return sorted((p for p in points if not any(beats(q, p) for q in points)), key=lambda p: -p["top1"])


def choose(points: list[dict]) -> dict | None:
    """The most accurate file within the budget; of equally accurate ones, the quickest."""
    within = [p for p in points if p["within_budget"]]
    return min(within, key=lambda p: (-p["top1"], p["p90_ms"]), default=None)


def run_search(base: Manifest, request: SearchRequest, *, echo: Callable[[str], None] = print) -> dict:
    """Probe, train, time, choose, report and ship; returns the search document. Raises
    ``BudgetNotMet`` (after writing the report) when no file meets the budget."""
    from exports.cpu import machine_class, recorded_flags
    from foundation.environment import environment
    from foundation.records import TeacherRecord, kind_of, need
    from pipeline.orchestrator import output_folders, run_pipeline

    if base.search is None:
        raise ManifestError("search: the manifest has no search section; add search.candidates and "
                            "search.budget (docs/search.md), e.g. with -o 'search={candidates: [resnet8, "
                            "resnet20], budget: {latency: {batch: 1, max_p90_ms: 5}}}'")
    check_launcher(request.launcher)
    search = base.search
    started = time.perf_counter()
    manifests = [candidate_manifest(base, c) for c in search.candidates]  # every candidate valid before compute
    folders = output_folders(base)
    teacher = run_pipeline(manifests[0], until=kind_of(TeacherRecord), progress=False, echo=echo)
    echo(f"teacher {base.teacher.model}: {need(teacher.artifacts, TeacherRecord).artifact.record.get('headline', '')}")
    probed = probe(base, list(search.candidates), echo)
    hopeful = [c for c in search.candidates if not probed[c.name]["dropped"]]
    pruned: dict[str, dict] = {}
    if search.halving is not None and len(hopeful) > 1:
        hopeful, pruned = halve(base, hopeful, request, echo)
    trained = cells(base, [SearchCell(c, full_epochs(base, c)) for c in hopeful], request, echo) if hopeful else {}
    points, rows = [], []
    for candidate in search.candidates:
        row = {"candidate": candidate.name, "model": candidate.model, "train": candidate.train,
               "probe": probed[candidate.name]}
        if probed[candidate.name]["dropped"]:
            row.update(status="dropped", why=f"untrained files' p90 at batch {search.budget.latency.batch} "
                                            f"({probed[candidate.name]['fastest_ms']:.3g} ms at best) over the "
                                            f"budget: not trained")
        elif candidate.name in pruned:
            stop = pruned[candidate.name]
            row.update(status="pruned", why=f"stopped by successive halving at {stop['epochs']} epochs "
                                            f"(val top-1 {stop['val_top1']:.2f})", halving=stop)
        else:
            own, figures = _points(base, candidate, echo)
            points += own
            cell = trained[SearchCell(candidate, full_epochs(base, candidate)).name]
            row.update(status="trained", **{**figures, "cached": figures["cached"] and cell["cached"]},
                       epochs=cell["epochs"], val_top1=cell["val_top1"])
        rows.append(row)
    chosen, front = choose(points), pareto(points)
    for point in points:
        point["pareto"] = any(point is p for p in front)
        point["chosen"] = point is chosen
        if point["within_budget"] and not point["chosen"]:
            point["why"] = f"within budget, less accurate than {chosen['candidate']} {chosen['target']}"
    for row in (r for r in rows if r["status"] == "trained"):
        mine = [p for p in points if p["candidate"] == row["candidate"]]
        within = [p for p in mine if p["within_budget"]]
        if chosen is not None and chosen["candidate"] == row["candidate"]:
            row["why"] = f"chosen: {chosen['target']}"
        elif within:
            row["why"] = (f"within budget ({max(p['top1'] for p in within):.2f}% at best), less accurate than "
                          f"{chosen['candidate']} {chosen['target']}")
        else:
            row["why"] = "; ".join(f"{p['target']}: {p['why']}" for p in mine)
    document = {
        "search": {"name": base.name, "teacher": base.teacher.model, "data": base.data.name,
                   "budget": search.budget.model_dump(mode="json"), "metric": search.metric,
                   "halving": search.halving.model_dump(mode="json") if search.halving else None,
                   "candidates": [c.name for c in search.candidates], "launcher": request.launcher,
                   "jobs": request.jobs},
        "teacher_top1": next((r["teacher_top1"] for r in rows if r["status"] == "trained"), None),
        "candidates": rows, "points": points, "chosen": chosen, "shipped": None, "wall_s": None,
        "environment": environment(),
        "cpu": {"class": machine_class(), "flags": [flag for flag, on in recorded_flags().items() if on]},
    }
    if chosen is None:
        document["wall_s"] = round(time.perf_counter() - started, 1)
        write_search(document, folders["report.dir"])
        closest = min(points, key=lambda p: p["p90_ms"], default=None)
        where = (f"the quickest file is {closest['candidate']} {closest['target']}: p90 {closest['p90_ms']:.3g} ms, "
                 f"top-1 {closest['top1']:.2f}% ({closest['why']})" if closest else
                 "every candidate was dropped before training: " + ", ".join(
                     f"{r['candidate']} {r['probe']['fastest_ms']:.3g} ms" for r in rows))
        raise BudgetNotMet(f"search: no candidate meets the budget (p90 <= {search.budget.latency.max_p90_ms:g} ms "
                           f"at batch {search.budget.latency.batch}); {where}")
    note = (f"cskd-pipeline search of manifest {base.name!r}: the most accurate of {len(points)} files from "
            f"{len(search.candidates)} candidates within p90 <= {search.budget.latency.max_p90_ms:g} ms at batch "
            f"{search.budget.latency.batch} ({chosen['target']}: {chosen['top1']:.2f}% test top-1, p90 "
            f"{chosen['p90_ms']:.3g} ms); report {base.report.dir}/{base.name}/search.html")
    document["chosen"] = {**chosen, "note": note}
    document["wall_s"] = round(time.perf_counter() - started, 1)
    write_search(document, folders["report.dir"])
    if request.ship:
        winner = next(c for c in search.candidates if c.name == chosen["candidate"])
        outcome = run_pipeline(candidate_manifest(base, winner, chosen=document["chosen"]), progress=False,
                               quiet=True, echo=echo)
        document["shipped"] = os.path.relpath(outcome.shipped) if outcome.shipped else None
        document["wall_s"] = round(time.perf_counter() - started, 1)
        write_search(document, folders["report.dir"])
    return document


def write_search(document: dict, folder: Path) -> None:
    """``search.json`` and ``search.html`` in the manifest's report folder, each replaced atomically."""
    from pipeline.history import write_pages
    from pipeline.search_page import render_html

    write_pages(folder, {"search.json": json.dumps(document, indent=2, allow_nan=False) + "\n",
                         "search.html": render_html(document)})
