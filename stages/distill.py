"""Distill: train the student against the frozen teacher with the manifest's loss."""

from __future__ import annotations

from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import WEIGHTS_FILE
from stages.training import run_training


class DistillStage(Stage):
    kind = "distill"
    version = 1
    inputs = ("teacher",)

    def config(self, manifest: Manifest) -> dict:
        return {"data": dump(manifest.data), "student": dump(manifest.student),
                "distributed": dump(manifest.distributed)}

    def run(self, ctx: StageContext) -> StageResult:
        last = run_training("distill", ctx.manifest, ctx.data, teacher_weights=ctx.inputs["teacher"].file(WEIGHTS_FILE),
                            work_dir=ctx.work_dir, out_dir=ctx.out_dir, progress=ctx.progress)
        return StageResult(last, f"val top-1 {last['val_top1']:.2f}")
