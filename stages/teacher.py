"""Teacher: train it with cross-entropy, or load a checkpoint given with its sha256."""

from __future__ import annotations

from cskd.engine import train
from cskd.objectives import CrossEntropy
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import build_network, load_network, save_network


class TeacherStage(Stage):
    kind = "teacher"
    version = 1

    def config(self, manifest: Manifest) -> dict:
        teacher = dump(manifest.teacher)
        if manifest.teacher.checkpoint is not None:
            # The file's content, not where it lies, defines the teacher.
            teacher["checkpoint"] = {"sha256": manifest.teacher.checkpoint.sha256.lower()}
        return {"data": dump(manifest.data), "teacher": teacher}

    def run(self, ctx: StageContext) -> StageResult:
        section = ctx.manifest.teacher
        if section.checkpoint is not None:
            ref = section.checkpoint
            model = load_network(section.model, ctx.data, ref.path, sha256=ref.sha256)
            save_network(model, ctx.out_dir)
            return StageResult({"source": "checkpoint"}, "loaded checkpoint")
        model = build_network(section.model, ctx.data, seed=section.train.seed)
        last = train(CrossEntropy(model), ctx.data.train, ctx.data.val, section.train,
                     work_dir=ctx.work_dir, metrics_path=ctx.out_dir / "metrics.jsonl", progress=ctx.progress)
        save_network(model, ctx.out_dir)
        return StageResult({"source": "trained", **last}, f"val top-1 {last['val_top1']:.2f}")
