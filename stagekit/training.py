"""Training for the teacher and distill stages, in this process or in N processes.

With ``nproc > 1`` the training runs under torch's elastic launcher (the API
behind ``torchrun``): N worker processes, DistributedDataParallel, NCCL on GPUs
and gloo on CPUs. Rank 0 writes the checkpoints and the final weights; the store
commit stays in the pipeline's own process. Workers receive the stage's config
as JSON, never the manifest.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel

from cskd.config import Strict, TrainConfig
from cskd.distributed import local_rank, rank
from cskd.engine import train
from cskd.loss_registry import build_objective
from cskd.objectives import CrossEntropy
from foundation.live_metrics import epoch_logger
from foundation.records import TrainedRecord
from stagekit.data import dataset, test_split, train_val
from stagekit.data_section import TestData, TrainData
from stagekit.model_sections import Normalization
from stagekit.models import InitRef, build_network, load_network, save_network


class Launch(Strict):
    """Where a training stage runs (not what it computes: declared Located in stage configs)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def launch_of(manifest) -> Launch:
    d = manifest.distributed
    return Launch(
        nproc=d.nproc, nnodes=d.nnodes, node_rank=d.node_rank, rdzv_endpoint=d.rdzv_endpoint
    )


def nodes_in_id(manifest) -> int | None:
    """The node count as a stage id sees it: absent for one machine (ids made before it existed)."""
    return manifest.distributed.nnodes if manifest.distributed.nnodes > 1 else None


class TrainingJob(BaseModel):
    """One training run: what the teacher and distill stages hand to a (worker) process."""

    role: str  # "teacher" or "distill"
    model: str
    train: TrainConfig
    data: TrainData
    loss: dict | None = None  # distill: the loss config's data
    teacher_model: str | None = None
    teacher_weights: str | None = None
    work_dir: str
    out_dir: str
    init: InitRef | None = None  # weights to start from
    preprocess: Normalization | None = None  # None: the data set's statistics
    # the paper protocol: the test split evaluated after every epoch
    monitor: TestData | None = None


def epoch_lines(
    job: TrainingJob, samples: int, log: Callable[[str], None]
) -> Callable[[dict], None]:
    """An ``on_epoch`` callback printing one plain line per epoch: the stage, model, epoch,
    every loss term, val top-1, images/s and the time left (readable under CI, nohup or tee)."""
    started = time.perf_counter()
    last = [started]
    first = []  # the first epoch this process trains: after a resume, not 1

    def line(row: dict) -> None:
        now = time.perf_counter()
        done, total = row["epoch"], job.train.epochs
        first[:] = first or [done]
        parts = {
            k: v for k, v in row.items() if k not in ("epoch", "lr", "val_top1", "monitor_top1")
        }
        # one term (the teacher's ce) is the loss: say it once
        if len(parts) == 2 and "loss" in parts:
            parts = {"loss": parts["loss"]}
        terms = " ".join(f"{k} {v:.4g}" for k, v in parts.items())
        val = f"val top-1 {row['val_top1']:.2f}" if row["val_top1"] is not None else "no val split"
        if "monitor_top1" in row:
            val += f"  test top-1 {row['monitor_top1']:.2f} (paper protocol)"
        # from the epochs this process timed
        eta = (now - started) / (done - first[0] + 1) * (total - done)
        log(
            f"[{job.role:<8}] {job.model} epoch {done}/{total}  {terms}  {val}  "
            f"{samples / max(now - last[0], 1e-9):.0f} img/s  ETA "
            f"{int(eta // 60)}:{int(eta % 60):02d}"
        )
        last[0] = now

    return line


def _on_epoch(
    job: TrainingJob, samples: int, log: Callable[[str], None] | None
) -> Callable[[dict], None] | None:
    """What rank 0 does with each epoch's row: print its line, and log it to the open MLflow run."""
    callbacks = [
        c
        for c in (
            epoch_lines(job, samples, log) if log is not None else None,
            epoch_logger(job.role, warn=log or print),
        )
        if c is not None
    ]
    if not callbacks:
        return None

    def each(row: dict) -> None:
        for callback in callbacks:
            callback(row)

    return each


def paper_protocol(metrics_file: Path) -> dict | None:
    """The best test top-1 over the epochs of a run trained with a monitor (the paper protocol),
    from its metrics history; None for a run without one."""
    rows = (
        [json.loads(line) for line in metrics_file.read_text().splitlines()]
        if metrics_file.is_file()
        else []
    )
    rows = [r for r in rows if r.get("monitor_top1") is not None]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["monitor_top1"])
    return {
        "best_test_top1": best["monitor_top1"],
        "best_epoch": best["epoch"],
        "last_test_top1": rows[-1]["monitor_top1"],
        "selected_on": "test split (the KD papers' protocol: the best epoch chosen on the test "
                       "set; an optimistic number, never read by the gate)",
    }


def val_summary(last: dict) -> str:
    """The one-line summary of a training stage."""
    return (
        f"val top-1 {last['val_top1']:.2f}"
        if last.get("val_top1") is not None
        else "trained on all training images"
    )


def train_job(job: TrainingJob, *, progress, log: Callable[[str], None] | None = None) -> dict:
    """``progress``: False, or the run's ``rich.progress.Progress`` (the engine adds its bars)."""
    """Train the teacher (CE) or distill the student; save weights into ``job.out_dir``."""
    source = job.data.source
    model = build_network(job.model, source, seed=job.train.seed, preprocess=job.preprocess)
    started_from = {}
    if job.init is not None:
        from cskd.models.init import load_initial_weights

        fresh = load_initial_weights(
            model.net, job.init.path, fmt=job.init.format, num_classes=dataset(source).num_classes
        )
        # The model card says which layers did not come from the file (a new head for new classes).
        started_from = {
            "init": {"sha256": job.init.sha256, "format": job.init.format, "reinitialised": fresh}
        }
    if job.role == "teacher":
        objective = CrossEntropy(model)
    else:
        from stagekit.model_sections import (
            loss_config,  # a plug-in's loss is loaded in a worker too
        )

        teacher = load_network(job.teacher_model, source, Path(job.teacher_weights))
        objective = build_objective(loss_config(job.loss), model, teacher)
    train_split, val_split = train_val(job.data)
    out_dir = Path(job.out_dir)
    last = train(
        objective,
        train_split,
        val_split,
        job.train,
        work_dir=Path(job.work_dir),
        metrics_path=out_dir / TrainedRecord.HISTORY,
        progress=progress,
        label=f"[{job.role}] {job.model}",
        on_epoch=_on_epoch(job, len(train_split), log) if rank() == 0 else None,
        monitor=test_split(job.monitor) if job.monitor is not None else None,
    )
    # replicas hold identical weights (buffers synced): one writer per node, into its own out_dir
    if local_rank() == 0:
        save_network(model, out_dir)
    return {
        **last,
        **started_from,
        "normalization": {
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
        },
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "train_samples": len(train_split),
        "val_samples": len(val_split),
    }


def _worker(job_json: str) -> dict:
    """One rank: join the process group the launcher set up, train, leave."""
    import torch.distributed as dist

    from foundation import plugins

    # what training builds, from installed plug-ins as in the parent
    for group in ("models", "losses"):
        plugins.load_all(group)

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        return train_job(
            TrainingJob.model_validate_json(job_json),
            progress=False,
            # rank 0's lines reach the parent's stdout
            log=lambda line: print(line, flush=True),
        )
    finally:
        dist.destroy_process_group()


def run_training(
    job: TrainingJob, *, launch: Launch, progress, log: Callable[[str], None] | None = None
) -> dict:
    """Train in this process, or in ``launch.nproc`` workers on each of ``launch.nnodes`` machines
    through torch's elastic launcher (c10d rendezvous; node 0 hosts it at ``rdzv_endpoint``)."""
    # decode once here: a data error stops the run before any worker starts
    dataset(job.data.source)
    if launch.world_size == 1:
        return train_job(job, progress=progress, log=log)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if launch.nnodes == 1:
        endpoint, run_id, rdzv = "127.0.0.1:0", uuid.uuid4().hex, {}
    else:  # every node must name the same run: the stage's work folder names its artifact
        endpoint, run_id = launch.rdzv_endpoint, f"cskd-{job.role}-{Path(job.work_dir).name[-24:]}"
        # node 0 serves the rendezvous store; the others connect
        rdzv = {"is_host": launch.node_rank == 0}
    config = LaunchConfig(
        min_nodes=launch.nnodes,
        max_nodes=launch.nnodes,
        nproc_per_node=launch.nproc,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv,
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        results = elastic_launch(config, _worker)(job.model_dump_json())
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()))
        raise RuntimeError(
            f"{job.role} training failed in a worker process "
            f"({first.message or first.error_file}); rerun to resume from the last checkpoint"
        ) from None
    # keyed by global rank: this node's first worker (identical on every rank)
    return results[min(results)]
