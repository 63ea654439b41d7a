"""Where a study's cells run: here one after another, in ``--jobs`` local processes (one GPU
each on a GPU machine), or as submitit jobs (Slurm). A cell arrives as its manifest, as JSON, so
a worker needs nothing from the study that planned it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from foundation.errors import MissingBackend, PipelineError
from foundation.manifest import Manifest

if TYPE_CHECKING:
    from pipeline.study import Cell


def validated(manifest_json: str, threads: int | None = None):
    """A cell's manifest (as JSON) run up to validation, cached if done before: (manifest, outcome).
    Runs in this process, a ``--jobs`` worker, or a submitit job: everything it needs is in its
    arguments."""
    import stages  # noqa: F401 - the registries, in a fresh worker process too
    from foundation.records import ValidationRecord, kind_of
    from pipeline.orchestrator import run_pipeline

    if threads:
        import torch

        torch.set_num_threads(threads)
    manifest = Manifest.model_validate_json(manifest_json)
    return manifest, run_pipeline(manifest, until=kind_of(ValidationRecord), progress=False, quiet=True,
                                  echo=lambda line: None)


def run_cell(manifest_json: str, cell: Cell, threads: int | None = None) -> dict:
    """Run one study cell up to validation (``validated``); its result row."""
    from foundation.records import StudentRecord, ValidationRecord, need, training_curves

    manifest, outcome = validated(manifest_json, threads)
    student, validation = need(outcome.artifacts, StudentRecord), need(outcome.artifacts, ValidationRecord)
    distill = student.artifact
    epochs = manifest.student.train.epochs
    samples = student.record.train_samples or 0
    wall = float(distill.record.get("wall_s") or 0.0)
    return {"loss": cell.loss.label, "loss_config": distill.record["config"]["loss"], "batch_size": cell.batch_size,
            "seed": cell.seed, "student_top1": validation.record.student_top1,
            "teacher_top1": validation.record.teacher_top1, "distill_id": distill.id,
            "cached": all(r.status == "cached" for r in outcome.reports if r.id in (distill.id, validation.id)),
            "train_wall_s": wall, "images_per_s": round(samples * epochs / wall, 1) if wall else None,
            "device": distill.record.get("environment", {}).get("device"),
            # test top-1 after each epoch (validate.paper_protocol: true), from the distill artifact itself
            "curve": [row["monitor_top1"] for row in training_curves(distill) if row.get("monitor_top1") is not None]}


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _pin_worker(slots) -> None:
    """A ``--jobs`` worker takes one GPU (or nothing on a CPU machine) for its lifetime."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def run_local(work: list[tuple[str, Cell]], jobs: int, on_done: Callable[[dict], None],
              echo: Callable[[str], None], fn: Callable[..., dict] = run_cell) -> list[dict]:
    """``fn(manifest JSON, cell, threads)`` for each (cell manifest JSON, cell), here one after another,
    or in ``jobs`` processes (``fn`` then must be importable by name: a module-level function)."""
    if jobs == 1:
        rows = []
        for manifest_json, cell in work:
            echo(f"      {cell.name} ...  (epoch lines: the store's logs/)")
            rows.append(fn(manifest_json, cell))
            on_done(rows[-1])
        return rows
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    gpus = _gpu_count()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    slots = context.Manager().Queue()
    for i in range(jobs):
        slots.put(i % gpus if gpus else None)
    threads = None if gpus else max(1, (os.cpu_count() or 1) // jobs)  # CPU cells share the cores
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_pin_worker, initargs=(slots,)) as pool:
        futures = {pool.submit(fn, manifest_json, cell, threads): cell for manifest_json, cell in work}
        rows = []
        for future in as_completed(futures):
            rows.append(future.result())
            on_done(rows[-1])
    return rows


def check_launcher(launcher: str) -> None:
    """A launcher whose back-end is missing is exit 3 with one line, before anything trains."""
    if launcher == "local":
        return
    from foundation.backends import installed

    if not installed("submitit"):
        raise MissingBackend(f"--launcher {launcher} needs submitit: pip install 'cskd-pipeline[cluster]'")
    if launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise MissingBackend("--launcher slurm needs Slurm, and sbatch and srun are not on this machine's PATH; run "
                             "the study on a Slurm login node, or use --launcher local")


def run_submitit(work: list[tuple[str, Cell]], *, cluster: str, folder: Path, jobs: int, slurm: dict,
                 on_done: Callable[[dict], None], fn: Callable[..., dict] = run_cell) -> list[dict]:
    """Each (cell manifest JSON, cell) as a submitit job (Slurm, or local processes)."""
    try:
        import submitit
    except ImportError:
        raise MissingBackend("--launcher slurm needs submitit: pip install 'cskd-pipeline[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    if cluster == "slurm":  # one GPU per cell; the scheduler spreads cells over its machines
        executor.update_parameters(gpus_per_node=1, tasks_per_node=1, slurm_array_parallelism=jobs,
                                   **{k: v for k, v in slurm.items() if v is not None})
    else:
        executor.update_parameters(timeout_min=slurm.get("timeout_min") or 60)
    submitted = [executor.submit(fn, manifest_json, cell) for manifest_json, cell in work]
    rows = []
    for job, (_, cell) in zip(submitted, work, strict=True):
        try:
            rows.append(job.result())
        except Exception as exc:  # submitit wraps the worker's exception with its log's path
            raise PipelineError(f"cell {cell.name} failed in job {job.job_id}: "
                                f"{str(exc).strip().splitlines()[-1]} (logs: {folder})") from None
        on_done(rows[-1])
    return rows
