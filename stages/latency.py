"""Latency: p50/p90/p99 and throughput of the PyTorch student and every export, and of the
teacher in PyTorch and in ONNX Runtime FP32, for each batch size in the manifest, measured in
one process side by side, interleaved in rounds (``exports.latency.measure_interleaved``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from cskd.config import Strict
from exports.latency import measure_interleaved
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from foundation.backends import FASTEST, NOT_SHIPPED, TEACHER_ONNX, backend
from foundation.contracts import Added, Stage, StageContext, StageResult
from foundation.environment import environment
from foundation.manifest import Manifest
from foundation.records import LatencyRecord
from foundation.sections import SECTIONS
from stagekit.data_section import DataSource
from stagekit.models import WEIGHTS_FILE, load_network
from stagekit.serving_section import ServingSection


class LatencySection(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1, max_length=8)
    runs: int = Field(100, ge=100, le=100_000, description="timed runs per back-end and batch size")
    warmup: int = Field(10, ge=0, le=10_000)
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (default: torch's)")
    serving: ServingSection | None = Added(
        description="serve the student over HTTP and load-test it "
        "(`cskd-pipeline serve` and `loadtest`)"
    )

    @model_validator(mode="after")
    def _sizes(self) -> LatencySection:
        if any(b < 1 or b > 65_536 for b in self.batch_sizes):
            raise ValueError("batch sizes must be between 1 and 65536")
        return self


def _served_target_exported(manifest: Manifest) -> str | None:
    serving = manifest.latency.serving if manifest.latency else None
    if (
        serving is not None
        and serving.target != FASTEST
        and serving.target not in manifest.export.targets
    ):
        return f"latency.serving.target {serving.target!r} is not in export.targets"
    return None


SECTIONS.register(
    "latency",
    LatencySection | None,
    Field(None, description="measure latency of every exported model"),
    check=_served_target_exported,
)


class LatencyConfig(Strict):
    latency: LatencySection
    student_model: str
    teacher_model: str  # timed too: the report shows what compression bought
    targets: list[str]
    data: DataSource  # the student network's input shape and classes
    # timings belong to the machine: a store shared between machines must not reuse them
    machine: dict


class LatencyStageRecord(LatencyRecord):
    threads: int  # intra-op threads every runtime was timed with
    device: str


class LatencyStage(Stage):
    kind = "latency"
    version = 5  # 5: interleaved rounds with their spread; the teacher timed in ONNX Runtime too
    Config = LatencyConfig
    Record = LatencyStageRecord

    @classmethod
    def configure(cls, manifest: Manifest) -> LatencyConfig | None:
        if manifest.latency is None:
            return None
        env = environment()
        # the serving stage's settings are its own: editing them never re-times the in-process
        # models
        return LatencyConfig(
            latency=manifest.latency.model_copy(update={"serving": None}),
            student_model=manifest.student.model,
            teacher_model=manifest.teacher.model,
            targets=manifest.export.targets,
            data=manifest.data.source(),
            machine={
                "device": env["device"],
                "platform": env["platform"],
                "cpu_count": os.cpu_count(),
            },
        )

    def inputs(self, config: LatencyConfig) -> tuple[str, ...]:
        return ("teacher", "distill", *(backend(t).kind for t in config.targets))

    def run(self, config: LatencyConfig, ctx: StageContext) -> StageResult:
        section = config.latency
        threads = section.threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        shape = ctx.inputs["export"].record["input"]["shape"][1:]
        model = load_network(
            config.student_model, config.data, ctx.inputs["distill"].file(WEIGHTS_FILE)
        )
        teacher = load_network(
            config.teacher_model, config.data, ctx.inputs["teacher"].file(WEIGHTS_FILE)
        )
        runners = {
            t: backend(t).runner(ctx.inputs, batch_size=max(section.batch_sizes), threads=threads)
            for t in config.targets
        }
        cuda = frozenset(t for t in config.targets if backend(t).device == "cuda")
        results = []
        with tempfile.TemporaryDirectory() as scratch:
            # The teacher in ONNX Runtime FP32, for timing only (never shipped): the report's
            # headline
            # compares the student with the teacher on the same runtime, not ONNX Runtime with
            # eager.
            path = export_onnx(
                teacher, sample=torch.zeros(2, *shape), path=Path(scratch) / "teacher.onnx"
            )
            session = create_session(path, threads=threads)
            for batch in section.batch_sizes:
                images = np.zeros((batch, *shape), dtype=np.uint8)
                x = torch.from_numpy(images).float() / 255.0

                def eager(x=x, net=model):
                    with torch.inference_mode():
                        net(x)

                fns = {
                    "pytorch-eager": eager,
                    "teacher-eager": lambda x=x: eager(x, teacher),
                    TEACHER_ONNX: lambda i=images, n=batch: run_batched(session, i, batch_size=n),
                    **{target: (lambda r=run, i=images: r(i)) for target, run in runners.items()},
                }
                timed = measure_interleaved(
                    fns, batch=batch, warmup=section.warmup, runs=section.runs, cuda=cuda
                )
                results.extend({"backend": name, **cell} for name, cell in timed.items())
        (ctx.out_dir / "latency.json").write_text(
            json.dumps({"threads": threads, "results": results}, indent=2) + "\n"
        )
        best = max(
            (
                r
                for r in results
                if r["batch"] == max(section.batch_sizes) and r["backend"] not in NOT_SHIPPED
            ),
            key=lambda r: r["throughput_ips"],
        )
        return StageResult(
            {"threads": threads, "device": "cpu", "results": results},
            f"fastest at batch {best['batch']}: {best['backend']} {best['throughput_ips']:.0f} "
            "img/s",
        )
