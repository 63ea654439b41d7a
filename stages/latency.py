"""Latency: p50/p90/p99 and throughput of the PyTorch student and every export,
for each batch size in the manifest, measured in one process side by side."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from cskd.config import Strict
from exports.latency import measure
from pipeline.core.backends import backend
from pipeline.core.contracts import Stage, StageContext, StageResult
from pipeline.core.environment import environment
from pipeline.core.manifest import DataSource, LatencySection, Manifest
from stages.models import WEIGHTS_FILE, load_network


class LatencyConfig(Strict):
    latency: LatencySection
    student_model: str
    teacher_model: str  # timed too: the report shows what compression bought
    targets: list[str]
    data: DataSource  # the student network's input shape and classes
    machine: dict  # timings belong to the machine: a store shared between machines must not reuse them


class LatencyStage(Stage):
    kind = "latency"
    version = 4
    Config = LatencyConfig

    @classmethod
    def configure(cls, manifest: Manifest) -> LatencyConfig | None:
        if manifest.latency is None:
            return None
        env = environment()
        # the serving stage's settings are its own: editing them never re-times the in-process models
        return LatencyConfig(latency=manifest.latency.model_copy(update={"serving": None}),
                             student_model=manifest.student.model,
                             teacher_model=manifest.teacher.model,
                             targets=manifest.export.targets, data=manifest.data.source(),
                             machine={"device": env["device"], "platform": env["platform"], "cpu_count": os.cpu_count()})

    def inputs(self, config: LatencyConfig) -> tuple[str, ...]:
        return ("teacher", "distill", *(backend(t).kind for t in config.targets))

    def run(self, config: LatencyConfig, ctx: StageContext) -> StageResult:
        section = config.latency
        threads = section.threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        shape = ctx.inputs["export"].record["input"]["shape"][1:]
        model = load_network(config.student_model, config.data, ctx.inputs["distill"].file(WEIGHTS_FILE))
        teacher = load_network(config.teacher_model, config.data, ctx.inputs["teacher"].file(WEIGHTS_FILE))
        runners = {t: backend(t).runner(ctx.inputs, batch_size=max(section.batch_sizes), threads=threads)
                   for t in config.targets}
        results = []
        for batch in section.batch_sizes:
            images = np.zeros((batch, *shape), dtype=np.uint8)
            x = torch.from_numpy(images).float() / 255.0

            def eager(x=x, net=model):
                with torch.inference_mode():
                    net(x)

            timing = {"batch": batch, "warmup": section.warmup, "runs": section.runs}
            results.append({"backend": "pytorch-eager", **measure(eager, **timing)})
            results.append({"backend": "teacher-eager", **measure(lambda x=x: eager(x, teacher), **timing)})
            for target, run in runners.items():
                results.append({"backend": target, **measure(lambda r=run, i=images: r(i), **timing,
                                                              cuda=backend(target).device == "cuda")})
        (ctx.out_dir / "latency.json").write_text(json.dumps({"threads": threads, "results": results}, indent=2) + "\n")
        best = max((r for r in results if r["batch"] == max(section.batch_sizes) and r["backend"] != "teacher-eager"),
                   key=lambda r: r["throughput_ips"])
        return StageResult({"threads": threads, "device": "cpu", "results": results},
                           f"fastest at batch {best['batch']}: {best['backend']} {best['throughput_ips']:.0f} img/s")
