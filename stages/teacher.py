"""Teacher: train it with cross-entropy, or load a checkpoint given with its sha256."""

from __future__ import annotations

from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.manifest import Manifest
from stages.models import load_network, save_network
from stages.training import run_training


class TeacherStage(Stage):
    kind = "teacher"
    version = 1

    def config(self, manifest: Manifest) -> dict:
        teacher = dump(manifest.teacher)
        if manifest.teacher.checkpoint is not None:
            # The file's content, not where it lies, defines the teacher.
            teacher["checkpoint"] = {"sha256": manifest.teacher.checkpoint.sha256.lower()}
        return {"data": dump(manifest.data), "teacher": teacher, "distributed": dump(manifest.distributed)}

    def run(self, ctx: StageContext) -> StageResult:
        section = ctx.manifest.teacher
        if section.checkpoint is not None:
            ref = section.checkpoint
            model = load_network(section.model, ctx.data, ref.path, sha256=ref.sha256)
            save_network(model, ctx.out_dir)
            return StageResult({"source": "checkpoint"}, "loaded checkpoint")
        last = run_training("teacher", ctx.manifest, ctx.data, teacher_weights=None, work_dir=ctx.work_dir,
                            out_dir=ctx.out_dir, progress=ctx.progress)
        return StageResult({"source": "trained", **last}, f"val top-1 {last['val_top1']:.2f}")
