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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ManifestError
from pipeline.core.manifest import Manifest
from pipeline.study_launch import check_launcher, run_local, run_submitit

LAUNCHERS = ("local", "slurm", "submitit-local")

# Published training recipes a baseline can carry (`--losses kd@mdistiller`, or `--recipe own`),
# as student.train settings; the study's batch size and seed still come from the cell. Each
# names the configs it copies; a test holds every rate to them.
_STEP = {"schedule": "step", "milestones": [150, 180, 210], "gamma": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4,
         "warmup_epochs": 0}
RECIPES: dict[str, dict] = {
    # mdistiller configs/cifar100/kd.yaml, dkd/res32x4_res8x4.yaml, ... (KD, DKD, DIST)
    "mdistiller": {**_STEP, "epochs": 240, "lr": 0.05},
    # the CS-KD authors' (MLKD's) schedule (CSKD.md section 4)
    "cskd": {**_STEP, "epochs": 480, "lr": 0.025},
}
# Both recipes train ShuffleNet and MobileNetV2 students at 0.01: mdistiller's
# dkd/res32x4_shuv1.yaml, res32x4_shuv2.yaml, wrn40_2_shuv1.yaml, vgg13_mv2.yaml, res50_mv2.yaml,
# and the authors' configs (CSKD.md section 4). Not a ratio of the main rate (0.4 x 0.05 = 0.02).
SMALL_STUDENT_LR = {"mdistiller": 0.01, "cskd": 0.01}
OWN_RECIPE = {"ce": "mdistiller", "kd": "mdistiller", "dkd": "mdistiller", "dist": "mdistiller", "cskd": "cskd"}
_LOW_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")


@dataclass(frozen=True)
class LossSpec:
    label: str  # as the user wrote it: "kd", "kd:temperature=2", "kd@mdistiller"
    loss: dict
    recipe: str | None = None  # a name in RECIPES; None: the manifest's student.train
    seeds: int | None = None  # this arm's seed count (--seeds-for); None: the study's --seeds


@dataclass(frozen=True)
class Contrast:
    """Two arms whose paired difference isolates one part of a method."""

    loss: str
    control: str
    isolates: str  # what the difference measures, as a sentence's object: "the label weight"

@dataclass(frozen=True)
class Cell:
    loss: LossSpec
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.loss.label} b{self.batch_size} s{self.seed}"


def parse_losses(text: str) -> list[LossSpec]:
    """``ce,kd,cskd-core`` or variants ``kind:key=value,key=value``: a comma-separated item
    with ``=`` and no ``:`` continues the variant before it."""
    import yaml

    from cskd.loss_registry import LOSS_PRESETS, registered_losses

    groups: list[list[str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=", 1)[0]:
            if not groups:
                raise ManifestError(f"--losses: {item!r} has no loss before it; write kind:key=value")
            groups[-1].append(item)
        else:
            groups.append([item])
    if not groups:
        raise ManifestError("--losses: name at least one loss, e.g. --losses kd,cskd-core")
    specs = []
    for group in groups:
        head, _, first = group[0].partition(":")
        head, _, recipe = head.partition("@")
        if recipe and recipe not in RECIPES:
            raise ManifestError(f"--losses: unknown recipe {recipe!r} in {group[0]!r}; choose from {', '.join(RECIPES)}")
        if head in LOSS_PRESETS:
            loss = dict(LOSS_PRESETS[head])
        elif head in registered_losses():
            loss = {"kind": head}
        else:
            raise ManifestError(f"--losses: unknown loss {head!r}; choose from "
                                f"{', '.join([*LOSS_PRESETS, *sorted(set(registered_losses()) - {'cskd'})])}")
        for setting in ([first] if first else []) + group[1:]:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise ManifestError(f"--losses: {setting!r} in {head!r} is not key=value")
            loss[key.strip()] = yaml.safe_load(value)
        label = group[0].partition(":")[0] if len(group) == 1 and not first else ",".join([group[0], *group[1:]])
        specs.append(LossSpec(label, loss, recipe or None))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ManifestError(f"--losses: {labels} names a loss twice")
    return specs


def ablation(name: str) -> tuple[list[LossSpec], list[Contrast]]:
    """``study --ablate NAME``: the arms and contrasts of a named ablation.

    ``cskd``: each arm changes one part against the arm before it, so the paired
    difference of neighbours isolates that part:

    - ``kd``: Hinton's KD at mdistiller's defaults (CE 0.1, KL 0.9, T 4);
    - ``kd-ce1``: the same with cskd-core's label weight (the control for the label term:
      cskd-core weighs CE ten times more than kd does);
    - ``cskd-fixed-t``: cskd-core with CSWT off, every sample at the fixed temperature
      (``cswt_low = cswt_high = T``): the cosine loss against KL at the same label weight;
    - ``cskd-core``: CE + CS(T) + CS(CSWT), so against ``cskd-fixed-t`` it isolates CSWT;
    - ``cskd-paper``: the authors' full objective (two views, masks, correlation terms).
    """
    from cskd.loss_configs import CSKDLoss

    if name != "cskd":
        raise ManifestError(f"--ablate: unknown ablation {name!r}; choose from cskd")
    core = CSKDLoss(kind="cskd")
    label_weight = core.ce_weight
    fixed = core.temperature
    arms = [LossSpec("kd", {"kind": "kd"}),
            LossSpec("kd-ce1", {"kind": "kd", "ce_weight": label_weight}),
            LossSpec("cskd-fixed-t", {"kind": "cskd", "preset": "core", "cswt_low": fixed, "cswt_high": fixed}),
            LossSpec("cskd-core", {"kind": "cskd", "preset": "core"}),
            LossSpec("cskd-paper", {"kind": "cskd", "preset": "paper"})]
    contrasts = [Contrast("kd-ce1", "kd", f"the label weight (CE {label_weight:g} in place of kd's 0.1)"),
                 Contrast("cskd-fixed-t", "kd-ce1", f"the cosine loss in place of KL (both at T = {fixed:g})"),
                 Contrast("cskd-core", "cskd-fixed-t", "CSWT (per-sample temperatures in place of a fixed one)"),
                 Contrast("cskd-paper", "cskd-core",
                          "the authors' additions (strong view, confidence masks, correlation terms)"),
                 Contrast("cskd-core", "kd", "CS-KD core as a whole against KD")]
    return arms, contrasts


def with_seeds(specs: list[LossSpec], text: str | None) -> list[LossSpec]:
    """``--seeds-for LABEL=N,LABEL=N``: fewer (or more) seeds for the arms named."""
    if not text:
        return specs
    counts: dict[str, int] = {}
    labels = [s.label for s in specs]
    for item in (part.strip() for part in text.split(",") if part.strip()):
        label, sep, value = item.rpartition("=")
        if not sep or label not in labels or not value.isdigit() or int(value) < 1:
            raise ManifestError(f"--seeds-for: {item!r} is not LABEL=N with LABEL one of {', '.join(labels)} "
                                f"and N a positive integer")
        counts[label] = int(value)
    return [LossSpec(s.label, s.loss, s.recipe, counts.get(s.label, s.seeds)) for s in specs]


def with_recipes(specs: list[LossSpec], recipe: str) -> list[LossSpec]:
    """``--recipe own``: every loss without an explicit ``@recipe`` takes its published one
    (``OWN_RECIPE``); ``shared``: the manifest's student.train for all (as written)."""
    if recipe == "shared":
        return specs
    return [s if s.recipe else LossSpec(s.label, s.loss, OWN_RECIPE.get(s.loss["kind"]), s.seeds) for s in specs]


def recipe_settings(recipe: str, student_model: str) -> dict:
    """student.train settings of a named recipe for this student (the published lower rate for
    ShuffleNet and MobileNetV2 students)."""
    settings = dict(RECIPES[recipe])
    if student_model in _LOW_LR_STUDENTS:
        settings["lr"] = SMALL_STUDENT_LR[recipe]
    return settings


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
    from pipeline.core.records import TeacherRecord, kind_of, need
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
    from pipeline.core.environment import environment
    from pipeline.core.records import TeacherRecord, need
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
    from pipeline.history import owned_folder
    from pipeline.study_page import render_html

    owned_folder(folder, field="report.dir", what="run reports")
    for name, text in (("study.json", json.dumps(study, indent=2, allow_nan=False) + "\n"),
                       ("study.html", render_html(study))):
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, folder / name)


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
