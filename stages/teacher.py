"""Teacher: train it with cross-entropy, or load a checkpoint given with its sha256."""

from __future__ import annotations

from cskd.config import Strict, TrainConfig
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.manifest import CheckpointRef, Manifest, TrainData
from stages.models import load_network, save_network
from stages.training import TrainingJob, run_training, val_summary


class TeacherConfig(Strict):
    model: str
    train: TrainConfig | None
    checkpoint: CheckpointRef | None  # its path is Located: only the sha256 is in the id
    data: TrainData
    nproc: int


class TeacherStage(Stage):
    kind = "teacher"
    version = 2
    Config = TeacherConfig

    @classmethod
    def configure(cls, manifest: Manifest) -> TeacherConfig:
        t = manifest.teacher
        return TeacherConfig(model=t.model, train=t.train, checkpoint=t.checkpoint, data=manifest.data.train_view(),
                             nproc=manifest.distributed.nproc)

    def run(self, config: TeacherConfig, ctx: StageContext) -> StageResult:
        if config.checkpoint is not None:
            ref = config.checkpoint
            model = load_network(config.model, config.data.source, ref.path, sha256=ref.sha256)
            save_network(model, ctx.out_dir)
            parameters = sum(p.numel() for p in model.net.parameters())
            return StageResult({"source": "checkpoint", "parameters": parameters}, "loaded checkpoint")
        job = TrainingJob(role="teacher", model=config.model, train=config.train, data=config.data,
                          work_dir=str(ctx.work_dir), out_dir=str(ctx.out_dir))
        last = run_training(job, nproc=config.nproc, progress=ctx.progress, log=ctx.log)
        return StageResult({"source": "trained", **last}, val_summary(last))
