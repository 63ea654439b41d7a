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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import EXIT_GATE_FAILED, ManifestError, MissingBackend, PipelineError
from pipeline.core.manifest import Manifest
from pipeline.core.search_section import Candidate
from pipeline.study_launch import check_launcher, run_local, run_submitit, validated

PROBE_CALIBRATION_IMAGES = 16  # random pixels: an untrained INT8 file is timed, never judged
PROBE_KIND, PROBE_VERSION = "search_probe", 1  # the store's kind for a probe's figures


class BudgetNotMet(PipelineError):
    """No candidate's file meets the budget: exit 1, as a failed gate."""

    exit_code = EXIT_GATE_FAILED


@dataclass(frozen=True)
class SearchCell:
    candidate: Candidate
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.candidate.name} ({self.epochs} epochs)"


@dataclass(frozen=True)
class SearchRequest:
    jobs: int = 1
    launcher: str = "local"
    slurm: dict | None = None
    ship: bool = True


def full_epochs(base: Manifest, candidate: Candidate) -> int:
    return int(candidate.train.get("epochs", base.student.train.epochs))


def candidate_manifest(base: Manifest, candidate: Candidate, *, epochs: int | None = None,
                       chosen: dict | None = None) -> Manifest:
    """The base manifest with the candidate as its student (its own train settings, ``epochs`` for a
    halving rung) and the budget's batch among the latency batch sizes; with ``chosen`` (the target
    the search chose), the budget as the gate's latency rule on that file and the card's note."""
    from pydantic import ValidationError

    from pipeline.manifest_io import format_validation_error

    search = base.search
    data = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["student"]["model"] = candidate.model
    data["student"]["train"].update(candidate.train)
    if epochs is not None:
        data["student"]["train"]["epochs"] = epochs
    batch = search.budget.latency.batch
    latency = data.get("latency") or {"batch_sizes": []}
    latency["batch_sizes"] = sorted({*latency["batch_sizes"], batch})
    data["latency"] = latency
    if chosen is not None:
        data["gate"]["latency"] = {"backend": chosen["target"], "batch": batch,
                                   "max_p90_ms": search.budget.latency.max_p90_ms}
        data["ship"]["chosen_by"] = chosen["note"]
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"search.candidates: {candidate.name}: {format_validation_error(exc)}") from None


def train_cell(manifest_json: str, cell: SearchCell, threads: int | None = None) -> dict:
    """One candidate at some epochs, trained (or taken from the store), exported and validated. Runs
    here, in a ``--jobs`` worker or a submitit job: everything it needs is in its arguments."""
    from pipeline.core.records import StudentRecord, need, training_curves

    _, outcome = validated(manifest_json, threads)
    student = need(outcome.artifacts, StudentRecord).artifact
    curve = training_curves(student)
    return {"candidate": cell.candidate.name, "epochs": cell.epochs, "distill_id": student.id,
            "val_top1": curve[-1]["val_top1"] if curve else None,
            "cached": all(r.status == "cached" for r in outcome.reports if r.kind != "teacher"),
            "train_wall_s": float(student.record.get("wall_s") or 0.0)}


class _Folder:
    """What a back-end's loader reads an artifact through (``.file(name)``), for a probe's files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def file(self, name: str) -> Path:
        return self.folder / name


def _probe_id(base: Manifest, candidate: Candidate, threads: int) -> str:
    """What a probe's figures depend on: the network, the data's shape, the export settings, the
    batch, the threads and the machine (timings belong to it, as the latency stage's do)."""
    import hashlib

    from pipeline.core.contracts import recipe
    from pipeline.core.environment import environment

    env = environment()
    key = {"version": PROBE_VERSION, "model": candidate.model, "data": recipe(base.data.source()),
           "export": base.export.model_dump(mode="json"), "batch": base.search.budget.latency.batch,
           "threads": threads, "machine": {"device": env["device"], "platform": env["platform"],
                                           "cpu_count": os.cpu_count()}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def probe(base: Manifest, candidates: list[Candidate], echo: Callable[[str], None]) -> dict[str, dict]:
    """Each candidate's untrained files timed at the budget's batch, side by side in this process:
    ``{name: {"p90_ms": {target: ms}, "unprobed": [targets], "fastest_ms", "dropped"}}``. The figures
    are kept in the store (kind ``search_probe``, sealed and verified like any artifact), so a rerun
    times nothing again. A candidate whose network does not take the data's images is a
    ``ManifestError``."""
    import torch

    from pipeline.core.store import ArtifactStore

    search, store = base.search, ArtifactStore(base.store)
    limit = search.budget.latency.max_p90_ms * (1 + search.prescreen_slack)
    threads = (base.latency.threads if base.latency else None) or torch.get_num_threads()
    found: dict[str, dict] = {}
    for candidate in candidates:
        art_id = _probe_id(base, candidate, threads)
        artifact, _ = store.verified(PROBE_KIND, art_id) if store.exists(PROBE_KIND, art_id) else (None, [])
        if artifact is None:  # absent, or failing its seal: measured again (the commit quarantines a bad one)
            tmp = store.new_tmp_dir(PROBE_KIND, art_id)
            artifact = store.commit(tmp, kind=PROBE_KIND, art_id=art_id,
                                    record={"metrics": _time_untrained(base, candidate, threads),
                                            "config": {"model": candidate.model}})
            cached = ""
        else:
            cached = "  (cached)"
        figures = artifact.metrics
        p90 = figures["p90_ms"]
        fastest = min(p90.values(), default=None)
        dropped = not figures["unprobed"] and fastest is not None and fastest > limit
        found[candidate.name] = {**figures, "fastest_ms": fastest, "dropped": dropped}
        echo(f"probe {candidate.name:<16} untrained p90 at batch {search.budget.latency.batch}: "
             + ", ".join(f"{t} {ms:.3g} ms" for t, ms in p90.items())
             + ("  -> dropped before training" if dropped else "") + cached)
    return found


def _time_untrained(base: Manifest, candidate: Candidate, threads: int) -> dict:
    """Export the candidate's untrained network to every probed target and time each at the budget's
    batch: ``{"p90_ms": {target: ms}, "unprobed": [targets]}``."""
    import numpy as np
    import torch

    from cskd.models import Preprocessed, create_model
    from exports.latency import measure_interleaved
    from exports.onnx_export import export_onnx
    from pipeline.core.backends import backend

    export, batch = base.export, base.search.budget.latency.batch
    ds = base.data.source().load()
    shape = (ds.in_channels, *ds.image_size)
    torch.set_num_threads(threads)
    calibration = np.random.default_rng(0).random((PROBE_CALIBRATION_IMAGES, *shape), dtype=np.float32)
    images = np.zeros((batch, *shape), dtype=np.uint8)
    try:
        net = create_model(candidate.model, num_classes=ds.num_classes, in_channels=ds.in_channels)
    except ValueError as exc:
        raise ManifestError(f"search.candidates: {candidate.name}: {exc}") from None
    model = Preprocessed(net, mean=list(ds.mean), std=list(ds.std)).eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as exc:  # timm asserts its input size
        raise ManifestError(f"search.candidates: {candidate.name} does not take the data's {ds.name} images "
                            f"({'x'.join(map(str, shape))}): {str(exc).splitlines()[0]}; choose a model for "
                            f"this input size or set data.image_size") from None
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_onnx(model, sample=torch.zeros(2, *shape), path=Path(scratch) / "untrained.onnx",
                                opset=export.opset)
        files, runners, unprobed = {"onnx": onnx_path}, {}, []
        pending = list(export.targets)
        while pending:  # a target after the targets it is built from
            ready = [t for t in pending if all(s in files for s in backend(t).requires(export))]
            for target in ready or pending:
                pending.remove(target)
                spec = backend(target)
                if spec.probe is None or not ready or spec.device != "cpu":
                    unprobed.append(target)
                    continue
                folder = Path(scratch) / spec.kind
                folder.mkdir(exist_ok=True)
                spec.probe(files, folder / spec.file, export, calibration)
                files[target] = folder / spec.file
                runners[target] = spec.runner({spec.kind: _Folder(folder)}, batch_size=batch, threads=threads)
        timed = measure_interleaved({t: (lambda r=run: r(images)) for t, run in runners.items()}, batch=batch,
                                    warmup=10, runs=100)
    return {"p90_ms": {t: round(cell["p90_ms"], 4) for t, cell in timed.items()}, "unprobed": unprobed}


def _cells(base: Manifest, cells: list[SearchCell], request: SearchRequest, echo: Callable[[str], None]) -> dict:
    """Train (or take from the store) each cell through the study's launchers; rows by cell name."""
    work = [(candidate_manifest(base, c.candidate, epochs=c.epochs).model_dump_json(by_alias=True), c) for c in cells]
    rows: dict[str, dict] = {}

    def done(row: dict) -> None:
        rows[f"{row['candidate']} ({row['epochs']} epochs)"] = row
        echo(f"[{len(rows)}/{len(cells)}] {row['candidate']:<16} {row['epochs']:>4} epochs: val top-1 "
             f"{row['val_top1']:.2f}" + ("  (cached)" if row["cached"] else f"  ({row['train_wall_s']:.0f} s)"))

    if request.launcher == "local":
        run_local(work, request.jobs, done, echo, fn=train_cell)
    else:
        run_submitit(work, cluster="slurm" if request.launcher == "slurm" else "local",
                     folder=Path(base.store) / "search-jobs", jobs=request.jobs, slurm=request.slurm or {},
                     on_done=done, fn=train_cell)
    return rows


def rungs(min_epochs: int, factor: int, full: int) -> list[int]:
    """The epochs of each halving rung: min_epochs, times factor, ..., below full; then full."""
    out, epochs = [], min_epochs
    while epochs < full:
        out.append(epochs)
        epochs *= factor
    return [*out, full]


def _halve(base: Manifest, candidates: list[Candidate], request: SearchRequest,
           echo: Callable[[str], None]) -> tuple[list[Candidate], dict[str, dict]]:
    """Successive halving with Optuna's pruner: every candidate trains the first rung's epochs; at
    each rung the pruner keeps a candidate whose validation top-1 is among the best 1/factor of those
    that reached the rung before it (the first listed always goes on). Returns the candidates that
    reached their full epochs and, for the others, where they stopped."""
    try:
        import optuna
    except ImportError:
        raise MissingBackend("search.halving needs Optuna: pip install 'cskd-pipeline[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    halving = base.search.halving
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=halving.min_epochs, reduction_factor=halving.reduction_factor, min_early_stopping_rate=0))
    trials = {c.name: study.ask() for c in candidates}
    plans = {c.name: rungs(halving.min_epochs, halving.reduction_factor, full_epochs(base, c))[:-1]
             for c in candidates}
    alive, pruned = list(candidates), {}
    for step in range(max(len(p) for p in plans.values())):
        at = [SearchCell(c, plans[c.name][step]) for c in alive if step < len(plans[c.name])]
        rows = _cells(base, at, request, echo)
        for cell in at:
            trial, value = trials[cell.candidate.name], rows[cell.name]["val_top1"]
            trial.report(value, step=cell.epochs)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned[cell.candidate.name] = {"epochs": cell.epochs, "val_top1": value}
                echo(f"halving: {cell.candidate.name} stops at {cell.epochs} epochs (val top-1 {value:.2f})")
        alive = [c for c in alive if c.name not in pruned]
    for candidate in alive:
        study.tell(trials[candidate.name], state=optuna.trial.TrialState.COMPLETE, values=0.0)  # judged on test
    return alive, pruned


def _points(base: Manifest, candidate: Candidate, echo: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Each exported file of a trained candidate: its test top-1, p90 at the budget's batch and size."""
    from pipeline.core.backends import backend
    from pipeline.core.records import LatencyRecord, StudentRecord, ValidationRecord, kind_of, need
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
    cached = all(r.status == "cached" for run in (validated, outcome) for r in run.reports if r.kind != "teacher")
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
    from pipeline.core.environment import environment
    from pipeline.core.records import TeacherRecord, kind_of, need
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
        hopeful, pruned = _halve(base, hopeful, request, echo)
    trained = _cells(base, [SearchCell(c, full_epochs(base, c)) for c in hopeful], request, echo) if hopeful else {}
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
    chosen = choose(points)
    for point in points:
        point["pareto"] = point in pareto(points)
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
        "teacher_top1": next((r["teacher_top1"] for r in rows if r["status"] == "trained"), None), "candidates": rows, "points": points, "chosen": chosen, "shipped": None,
        "wall_s": None, "environment": environment(),
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


def markdown(document: dict) -> str:
    """The candidates table a terminal, a README or a pull request shows."""
    budget = document["search"]["budget"]
    lines = [f"budget: p90 <= {budget['latency']['max_p90_ms']:g} ms at batch {budget['latency']['batch']}"
             + (f", <= {budget['max_size_mb']:g} MB" if budget.get("max_size_mb") else ""), "",
             "| candidate | file | test top-1 | p90 ms | MB | within budget | pareto | note |",
             "|---|---|---|---|---|---|---|---|"]
    for row in document["candidates"]:
        mine = [p for p in document["points"] if p["candidate"] == row["candidate"]]
        if not mine:
            lines.append(f"| {row['candidate']} | - | - | - | - | no | - | {row['status']}: {row['why']} |")
        for p in mine:
            lines.append(f"| {p['candidate']} | {p['target']} | {p['top1']:.2f} | {p['p90_ms']:.3g} | "
                         f"{p['size_mb']:.2f} | {'yes' if p['within_budget'] else 'no'} | "
                         f"{'yes' if p['pareto'] else ''} | {'**chosen**' if p['chosen'] else p['why']} |")
    return "\n".join(lines)
