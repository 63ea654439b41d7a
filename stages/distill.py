"""Distill: train the student against the frozen teacher with a registered loss."""

from __future__ import annotations

from cskd.config import Strict, TrainConfig
from foundation.contracts import Added, Located, Stage, StageContext, StageResult
from foundation.manifest import Manifest
from foundation.records import StudentRecord
from stagekit.data_section import TestData, TrainData
from stagekit.model_sections import LossField, Normalization
from stagekit.models import WEIGHTS_FILE, InitRef, resolve_init, resolve_preprocess
from stagekit.training import (
    Launch,
    TrainingJob,
    launch_of,
    nodes_in_id,
    paper_protocol,
    run_training,
    val_summary,
)


class DistillConfig(Strict):
    model: str
    loss: LossField
    train: TrainConfig
    teacher_model: str  # to rebuild the teacher network its weights belong to
    data: TrainData
    nproc: int
    nnodes: int | None = Added()  # None: one machine
    # where it trains: node rank and rendezvous, not part of the id
    launch: Launch = Located(Launch())
    init: InitRef | None = Added()
    preprocess: Normalization | None = Added()  # None: the data set's statistics
    # validate.paper_protocol: the test split after every epoch
    paper_protocol: TestData | None = Added()


class DistillRecord(StudentRecord):
    """The student's last epoch: val_top1, lr and each term of its loss (ce, cs, cs_cswt, ...)."""

    epoch: int
    val_top1: float | None = None
    loss: float


class DistillStage(Stage):
    kind = "distill"
    # 4: the strong view's enhance ops and Cutout match PIL and the authors (5be4e5b; 3 missed it)
    version = 4
    # 3: the strong view draws from its own stream; PIL-exact geometric ops
    Config = DistillConfig
    Record = DistillRecord
    every_node = True
    requires = ("teacher",)

    @classmethod
    def configure(cls, manifest: Manifest) -> DistillConfig:
        s = manifest.student
        return DistillConfig(
            model=s.model,
            loss=s.loss.for_pair(manifest.teacher.model, s.model),
            train=s.train,
            teacher_model=manifest.teacher.model,
            data=manifest.data.train_view(),
            nproc=manifest.distributed.nproc,
            nnodes=nodes_in_id(manifest),
            launch=launch_of(manifest),
            init=resolve_init(s.init, field="student.init"),
            preprocess=resolve_preprocess(s.model, s.preprocess),
            paper_protocol=manifest.data.test_view() if manifest.validate_.paper_protocol else None,
        )

    def run(self, config: DistillConfig, ctx: StageContext) -> StageResult:
        job = TrainingJob(
            role="distill",
            model=config.model,
            train=config.train,
            data=config.data,
            loss=config.loss.model_dump(mode="json"),
            teacher_model=config.teacher_model,
            teacher_weights=str(ctx.inputs["teacher"].file(WEIGHTS_FILE)),
            work_dir=str(ctx.work_dir),
            out_dir=str(ctx.out_dir),
            init=config.init,
            preprocess=config.preprocess,
            monitor=config.paper_protocol,
        )
        last = run_training(job, launch=config.launch, progress=ctx.progress, log=ctx.log)
        protocol = paper_protocol(ctx.out_dir / DistillRecord.HISTORY)
        summary = val_summary(last)
        if protocol is not None:
            summary += (
                f"; paper protocol: best test top-1 {protocol['best_test_top1']:.2f} at epoch "
                f"{protocol['best_epoch']} (selected on the test set)"
            )
        return StageResult({**last, "paper_protocol": protocol}, summary)
