"""``cskd-pipeline study``: a method comparison on the user's own manifest.

A study is a grid of cells, loss x batch size x seed. Each cell is the manifest with
``student.loss``, ``student.train.batch_size`` and ``student.train.seed`` replaced, run
through the pipeline up to validation. The cells therefore share the teacher and
everything upstream through the artifact store, a finished cell is cached like any
run, and an interrupted study resumes where it stopped.

Cells of the same seed are paired: the engine draws the student's initial weights from
``train.seed`` before anything else, and the training order and the weak view from a
stream that no loss changes (a strong view has its own stream), so a paired difference
measures the loss and nothing else.

Cells run here one after another (``--jobs 1``), as N local processes (``--jobs N``; one
per GPU on a GPU machine), or as Slurm jobs through submitit (``--launcher slurm``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundation.errors import ManifestError
from foundation.manifest import Manifest
from pipeline.study_arms import (  # noqa: F401 - re-exported: the arms are part of the study's interface
    RECIPES,
    Contrast,
    LossSpec,
    ablation,
    parse_losses,
    recipe_settings,
    with_recipes,
    with_seeds,
)
from pipeline.study_launch import check_launcher, run_local, run_submitit

LAUNCHERS = ("local", "slurm", "submitit-local")

@dataclass(frozen=True)
class Cell:
    loss: LossSpec
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.loss.label} b{self.batch_size} s{self.seed}"


def cell_manifest(base: Manifest, cell: Cell) -> Manifest:
    """The base manifest with the cell's loss, its recipe's training settings, batch size and seed
    (validated like a file)."""
    from pydantic import ValidationError

    from pipeline.manifest_io import format_validation_error

    data = base.model_dump(mode="json", by_alias=True)
    if cell.loss.recipe:
        data["student"]["train"].update(recipe_settings(cell.loss.recipe, base.student.model))
    data["student"]["loss"] = cell.loss.loss
    data["student"]["train"]["batch_size"] = cell.batch_size
    data["student"]["train"]["seed"] = cell.seed
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"study cell {cell.name}: {format_validation_error(exc)}") from None


@dataclass(frozen=True)
class StudyRequest:
    losses: list[LossSpec]
    seeds: int
    batch_sizes: list[int]
    reference: str = "kd"
    jobs: int = 1
    launcher: str = "local"
    slurm: dict | None = None
    contrasts: tuple[Contrast, ...] = ()  # besides every loss against the reference

    def seeds_of(self, loss: LossSpec) -> int:
        return loss.seeds or self.seeds

    def cells(self) -> list[Cell]:
        """Seed by seed: a study stopped part-way holds whole pairs (every arm of the seeds
        it reached), not five seeds of one arm and none of another."""
        rounds = max(self.seeds_of(loss) for loss in self.losses)
        return [Cell(loss, batch, seed) for batch in self.batch_sizes for seed in range(rounds)
                for loss in self.losses if seed < self.seeds_of(loss)]


def run_study(base: Manifest, request: StudyRequest, *, echo: Callable[[str], None] = print) -> dict:
    """Run (or reuse) every cell, then the statistics; returns the study document."""
    from foundation.records import TeacherRecord, kind_of, need
    from pipeline.orchestrator import output_folders, run_pipeline

    check_launcher(request.launcher)
    labels = [s.label for s in request.losses]
    if request.reference not in labels:
        raise ManifestError(f"--reference {request.reference!r} is not among --losses ({', '.join(labels)})")
    cells = request.cells()
    # every cell is a valid manifest before anything runs; a worker gets its cell's as JSON
    work = [(cell_manifest(base, cell).model_dump_json(by_alias=True), cell) for cell in cells]
    folders = output_folders(base)
    started = time.perf_counter()
    # The shared upstream (data, teacher) once, here, before cells fan out: parallel cells
    # must not all train the same teacher.
    teacher = run_pipeline(cell_manifest(base, cells[0]), until=kind_of(TeacherRecord), progress=False, echo=echo)
    echo(f"teacher {base.teacher.model}: {need(teacher.artifacts, TeacherRecord).artifact.record.get('headline', '')}")
    echo(f"study {base.name}: {len(cells)} cells ({len(request.losses)} losses x {len(request.batch_sizes)} "
         f"batch sizes x {request.seeds} seeds), launcher {request.launcher}, jobs {request.jobs}")
    finished: list[dict] = []

    def on_done(row: dict) -> None:
        finished.append(row)
        echo(f"[{len(finished)}/{len(cells)}] {row['loss']:<12} batch {row['batch_size']:<4} seed {row['seed']}: "
             f"top-1 {row['student_top1']:.2f}" + ("  (cached)" if row["cached"] else
                                                  f"  ({row['train_wall_s']:.0f} s, {row['images_per_s'] or 0:.0f} img/s)"))

    try:
        if request.launcher == "local":
            run_local(work, request.jobs, on_done, echo)
        else:
            run_submitit(work, cluster="slurm" if request.launcher == "slurm" else "local",
                         folder=Path(base.store) / "study-jobs", jobs=request.jobs, slurm=request.slurm or {},
                         on_done=on_done)
    except BaseException:  # interrupted or failed: keep what finished (complete: false); a rerun resumes
        if finished:
            write_study(_document(base, request, cells, finished, teacher, started, complete=False),
                        folders["report.dir"])
        raise
    study = _document(base, request, cells, finished, teacher, started, complete=True)
    write_study(study, folders["report.dir"])
    return study


def _document(base: Manifest, request: StudyRequest, cells: list[Cell], rows: list[dict], teacher, started: float,
              *, complete: bool) -> dict:
    from foundation.environment import environment
    from foundation.records import TeacherRecord, need
    from pipeline.study_stats import summarize

    # shown arm by arm (the cells ran seed by seed)
    arm = {s.label: i for i, s in enumerate(request.losses)}
    rows = sorted(rows, key=lambda r: (request.batch_sizes.index(r["batch_size"]), arm[r["loss"]], r["seed"]))
    stats = summarize(rows, reference=request.reference,
                      contrasts=[(c.loss, c.control, c.isolates) for c in request.contrasts])
    return {
        "study": {"name": base.name, "losses": {s.label: s.loss for s in request.losses},
                  "recipes": {s.label: s.recipe or "manifest" for s in request.losses},
                  "seeds": list(range(request.seeds)), "batch_sizes": request.batch_sizes,
                  "seeds_per_loss": {s.label: request.seeds_of(s) for s in request.losses},
                  "reference": request.reference, "launcher": request.launcher, "jobs": request.jobs,
                  "teacher": base.teacher.model, "student": base.student.model,
                  "epochs": base.student.train.epochs, "data": base.data.name,
                  "train_samples": need(teacher.artifacts, TeacherRecord).record.train_samples},
        "teacher_top1": rows[0]["teacher_top1"],
        "complete": complete,
        "cells": rows,
        **stats,
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }


def write_study(study: dict, folder: Path) -> None:
    """``study.json`` and ``study.html`` in the manifest's report folder, each replaced atomically."""
    from pipeline.history import write_pages
    from pipeline.study_page import render_html

    write_pages(folder, {"study.json": json.dumps(study, indent=2, allow_nan=False) + "\n",
                         "study.html": render_html(study)})


def markdown(study: dict) -> str:
    """The tables a terminal, a README or a pull request shows."""
    def fmt(v, digits=2):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    lines = [f"teacher {study['study']['teacher']}: {study['teacher_top1']:.2f} test top-1", "",
             "| loss | batch | n | mean | std | 95% CI | seeds |", "|---|---|---|---|---|---|---|"]
    for row in study["summary"]:
        ci = f"[{fmt(row['ci95'][0])}, {fmt(row['ci95'][1])}]" if row["ci95"] else "-"
        lines.append(f"| {row['loss']} | {row['batch_size']} | {row['n']} | {fmt(row['mean'])} | {fmt(row['std'])} "
                     f"| {ci} | {', '.join(fmt(s) for s in row['scores'])} |")
    if study["paired"]:
        ref = study["study"]["reference"]
        lines += ["", f"Paired by seed against {ref} (difference = loss - {ref}, test top-1 points):", "",
                  "| loss | batch | n | mean diff | 95% t-interval | excludes 0 | wins/losses/ties | sign test p |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in study["paired"]:
            ci = f"[{fmt(row['ci95'][0])}, {fmt(row['ci95'][1])}]" if row["ci95"] else "-"
            verdict = {True: "yes", False: "no", None: "-"}[row["excludes_zero"]]
            lines.append(f"| {row['loss']} | {row['batch_size']} | {row['n']} | {fmt(row['mean_diff'])} | {ci} "
                         f"| {verdict} | {row['wins']}/{row['losses']}/{row['ties']} | {fmt(row['sign_p'], 3)} |")
    if study.get("contrasts"):
        lines += ["", "What each part adds (arm minus control, paired by seed):", "",
                  "| arm | control | isolates | n | mean diff | 95% t-interval | seeds ahead | sign test p |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in study["contrasts"]:
            ci = f"[{fmt(row['ci95'][0])}, {fmt(row['ci95'][1])}]" if row["ci95"] else "-"
            lines.append(f"| {row['loss']} | {row['reference']} | {row['isolates']} | {row['n']} | "
                         f"{fmt(row['mean_diff'])} | {ci} | {row['wins']} of {row['n']} | {fmt(row['sign_p'], 3)} |")
        lines += [""] + [row["sentence"] for row in study["contrasts"]]
    if study.get("conclusion"):
        lines += ["", study["conclusion"]]
    return "\n".join(lines)


__all__ = ["LAUNCHERS", "Cell", "LossSpec", "StudyRequest", "markdown", "parse_losses",
           "run_study"]
