"""The search's cells: a candidate at some epochs is the manifest with its student, trained, exported
and validated through the study's launchers and cached in the store like any run; successive halving
over epochs with Optuna's pruner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundation.errors import ManifestError, MissingBackend
from foundation.manifest import Manifest
from foundation.search_section import Candidate
from pipeline.study_launch import run_local, run_submitit, validated


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
    from foundation.records import StudentRecord, TeacherRecord, kind_of, need, training_curves

    _, outcome = validated(manifest_json, threads)
    student = need(outcome.artifacts, StudentRecord).artifact
    curve = training_curves(student)
    return {"candidate": cell.candidate.name, "epochs": cell.epochs, "distill_id": student.id,
            "val_top1": curve[-1]["val_top1"] if curve else None,
            "cached": all(r.status == "cached" for r in outcome.reports if r.kind != kind_of(TeacherRecord)),
            "train_wall_s": float(student.record.get("wall_s") or 0.0)}


def cells(base: Manifest, cells: list[SearchCell], request: SearchRequest, echo: Callable[[str], None]) -> dict:
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


def halve(base: Manifest, candidates: list[Candidate], request: SearchRequest,
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
        rows = cells(base, at, request, echo)
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
