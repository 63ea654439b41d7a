"""Teacher: train it with cross-entropy, or load a checkpoint (identified by its sha256)."""

from __future__ import annotations

from pathlib import Path

from cskd.config import Strict, TrainConfig
from foundation.contracts import Added, Located, Stage, StageContext, StageResult
from foundation.errors import ManifestError
from foundation.manifest import Manifest
from foundation.records import TeacherRecord
from stagekit.data_section import TrainData
from stagekit.model_sections import CheckpointRef, Normalization
from stagekit.models import (
    InitRef,
    build_network,
    load_network,
    resolve_init,
    resolve_preprocess,
    save_network,
)
from stagekit.training import Launch, TrainingJob, launch_of, nodes_in_id, run_training, val_summary


class TeacherConfig(Strict):
    model: str
    train: TrainConfig | None
    checkpoint: CheckpointRef | None  # its path is Located: only the sha256 is in the id
    data: TrainData
    nproc: int
    nnodes: int | None = Added()  # None: one machine
    # where it trains: node rank and rendezvous, not part of the id
    launch: Launch = Located(Launch())
    init: InitRef | None = Added()
    preprocess: Normalization | None = Added()  # None: the data set's statistics


class TeacherStageRecord(TeacherRecord):
    """A trained teacher's last epoch (val_top1, lr, each loss term), or a loaded checkpoint's
    size."""

    epoch: int | None = None
    val_top1: float | None = None


class TeacherStage(Stage):
    kind = "teacher"
    version = 2
    Config = TeacherConfig
    Record = TeacherStageRecord
    every_node = True

    @classmethod
    def configure(cls, manifest: Manifest) -> TeacherConfig:
        t = manifest.teacher
        return TeacherConfig(
            model=t.model,
            train=t.train,
            checkpoint=_with_sha256(t.checkpoint),
            data=manifest.data.train_view(),
            nproc=manifest.distributed.nproc,
            nnodes=nodes_in_id(manifest),
            launch=launch_of(manifest),
            init=resolve_init(t.init, field="teacher.init"),
            preprocess=resolve_preprocess(t.model, t.preprocess),
        )

    def run(self, config: TeacherConfig, ctx: StageContext) -> StageResult:
        if config.checkpoint is not None:
            ref = config.checkpoint
            if ref.format is None:  # this project's own weights file
                model = load_network(config.model, config.data.source, ref.path, sha256=ref.sha256)
            else:  # a torchvision/timm state dict, used as it is: its head must fit the classes
                model = _load_foreign(config, ref)
            save_network(model, ctx.out_dir)
            parameters = sum(p.numel() for p in model.net.parameters())
            return StageResult(
                {"source": "checkpoint", "parameters": parameters}, "loaded checkpoint"
            )
        job = TrainingJob(
            role="teacher",
            model=config.model,
            train=config.train,
            data=config.data,
            work_dir=str(ctx.work_dir),
            out_dir=str(ctx.out_dir),
            init=config.init,
            preprocess=config.preprocess,
        )
        last = run_training(job, launch=config.launch, progress=ctx.progress, log=ctx.log)
        return StageResult({"source": "trained", **last}, val_summary(last))


def _with_sha256(ref: CheckpointRef | None) -> CheckpointRef | None:
    """The checkpoint with its sha256: the file's content is the teacher's identity, so a manifest
    that leaves the sha256 out gets it computed from the file (one that gives it is checked on
    load)."""
    if ref is None or ref.sha256 is not None:
        return ref
    from cskd.checkpoint import sha256_file

    if not Path(ref.path).is_file():
        raise ManifestError(
            f"teacher.checkpoint.path: {ref.path} not found; give the teacher's weights file"
        )
    return ref.model_copy(update={"sha256": sha256_file(ref.path)})


def _load_foreign(config: TeacherConfig, ref: CheckpointRef):
    from cskd.checkpoint import sha256_file
    from cskd.errors import CheckpointError
    from cskd.models.init import load_initial_weights
    from stagekit.data import dataset

    actual = sha256_file(ref.path)
    if actual != ref.sha256:
        raise CheckpointError(
            f"{ref.path}: sha256 is {actual}, the manifest declares {ref.sha256}; "
            f"fix the sha256 or the file"
        )
    model = build_network(config.model, config.data.source, preprocess=config.preprocess)
    load_initial_weights(
        model.net,
        ref.path,
        fmt=ref.format,
        num_classes=dataset(config.data.source).num_classes,
        allow_new_head=False,
    )
    return model.eval()
