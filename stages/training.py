"""Training for the teacher and distill stages, in this process or in N processes.

With ``distributed.nproc > 1`` the training runs under torch's elastic launcher
(the API behind ``torchrun``): N worker processes, DistributedDataParallel, NCCL
on GPUs and gloo on CPUs. Rank 0 writes the checkpoints and the final weights;
the store commit stays in the pipeline's own process.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import torch

from cskd.engine import rank, train
from cskd.objectives import CrossEntropy
from pipeline.contracts import DataProvider
from pipeline.manifest import Manifest
from stages.models import build_network, load_network, save_network
from stages.objectives import build_objective


def train_role(role: str, manifest: Manifest, data: DataProvider, *, teacher_weights: Path | None,
               work_dir: Path, out_dir: Path, progress: bool) -> dict:
    """Train the teacher (``role="teacher"``) or distill the student; save weights into ``out_dir``."""
    if role == "teacher":
        section = manifest.teacher
        model = build_network(section.model, data, seed=section.train.seed)
        objective, config = CrossEntropy(model), section.train
    else:
        teacher = load_network(manifest.teacher.model, data, teacher_weights)
        model = build_network(manifest.student.model, data, seed=manifest.student.train.seed)
        objective, config = build_objective(manifest.student.loss, model, teacher), manifest.student.train
    last = train(objective, data.train, data.val, config, work_dir=work_dir, metrics_path=out_dir / "metrics.jsonl",
                 progress=progress)
    if rank() == 0:  # replicas hold identical weights; one writer
        save_network(model, out_dir)
    return {**last, "parameters": sum(p.numel() for p in model.net.parameters())}


def _worker(manifest_json: str, role: str, teacher_weights: str | None, work_dir: str, out_dir: str) -> dict:
    """One rank: join the process group the launcher set up, train, leave."""
    import torch.distributed as dist

    from pipeline.manifest import Manifest

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        manifest = Manifest.model_validate_json(manifest_json)
        return train_role(role, manifest, DataProvider(manifest),
                          teacher_weights=Path(teacher_weights) if teacher_weights else None,
                          work_dir=Path(work_dir), out_dir=Path(out_dir), progress=False)
    finally:
        dist.destroy_process_group()


def run_training(role: str, manifest: Manifest, data: DataProvider, *, teacher_weights: Path | None,
                 work_dir: Path, out_dir: Path, progress: bool) -> dict:
    nproc = manifest.distributed.nproc
    if nproc == 1:
        return train_role(role, manifest, data, teacher_weights=teacher_weights, work_dir=work_dir,
                          out_dir=out_dir, progress=progress)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    try:
        results = elastic_launch(config, _worker)(manifest.model_dump_json(by_alias=True), role,
                                                  str(teacher_weights) if teacher_weights else None,
                                                  str(work_dir), str(out_dir))
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()))
        raise RuntimeError(f"{role} training failed in a worker process ({first.message or first.error_file}); "
                           f"rerun to resume from the last checkpoint") from None
    return results[0]
