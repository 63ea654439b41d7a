"""Distill: train the student against the frozen teacher with the manifest's loss."""

from __future__ import annotations

from cskd.engine import train
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import WEIGHTS_FILE, build_network, load_network, save_network
from stages.objectives import build_objective


class DistillStage(Stage):
    kind = "distill"
    version = 1
    inputs = ("teacher",)

    def config(self, manifest: Manifest) -> dict:
        return {"data": dump(manifest.data), "student": dump(manifest.student)}

    def run(self, ctx: StageContext) -> StageResult:
        manifest = ctx.manifest
        teacher = load_network(manifest.teacher.model, ctx.data, ctx.inputs["teacher"].file(WEIGHTS_FILE))
        student = build_network(manifest.student.model, ctx.data, seed=manifest.student.train.seed)
        objective = build_objective(manifest.student.loss, student, teacher)
        last = train(objective, ctx.data.train, ctx.data.val, manifest.student.train,
                     work_dir=ctx.work_dir, metrics_path=ctx.out_dir / "metrics.jsonl", progress=ctx.progress)
        save_network(student, ctx.out_dir)
        params = sum(p.numel() for p in student.net.parameters())
        return StageResult({**last, "parameters": params}, f"val top-1 {last['val_top1']:.2f}")
