"""Latency: p50/p90/p99 and throughput of the PyTorch student and every export,
for each batch size in the manifest, measured in one process side by side."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from exports.latency import measure
from pipeline.contracts import Stage, StageContext, StageResult, dump
from pipeline.environment import environment
from pipeline.manifest import Manifest
from stages.backends import backend_runners, produced_kinds
from stages.models import WEIGHTS_FILE, load_network


class LatencyStage(Stage):
    kind = "latency"
    version = 2

    def enabled(self, manifest: Manifest) -> bool:
        return manifest.latency is not None

    def input_kinds(self, manifest: Manifest) -> tuple[str, ...]:
        return ("distill", *produced_kinds(manifest))

    def config(self, manifest: Manifest) -> dict:
        # Timings belong to the machine: a store shared between machines must not reuse them.
        env = environment()
        return {"latency": dump(manifest.latency), "data": dump(manifest.data),
                "machine": {"device": env["device"], "platform": env["platform"], "cpu_count": os.cpu_count()}}

    def run(self, ctx: StageContext) -> StageResult:
        section = ctx.manifest.latency
        threads = section.threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        ds = ctx.data.dataset
        model = load_network(ctx.manifest.student.model, ctx.data, ctx.inputs["distill"].file(WEIGHTS_FILE))
        runners = backend_runners(ctx.manifest, ctx.inputs, batch_size=max(section.batch_sizes), threads=threads)
        results = []
        for batch in section.batch_sizes:
            images = np.zeros((batch, ds.in_channels, *ds.image_size), dtype=np.uint8)
            x = torch.from_numpy(images).float() / 255.0

            def eager(x=x):
                with torch.inference_mode():
                    model(x)

            results.append({"backend": "pytorch-eager", **measure(eager, batch=batch, warmup=section.warmup,
                                                                 runs=section.runs)})
            for target, run in runners.items():
                results.append({"backend": target, **measure(lambda r=run, i=images: r(i), batch=batch,
                                                              warmup=section.warmup, runs=section.runs,
                                                              cuda=target == "trt")})
        (ctx.out_dir / "latency.json").write_text(json.dumps({"threads": threads, "results": results}, indent=2) + "\n")
        best = max((r for r in results if r["batch"] == max(section.batch_sizes)), key=lambda r: r["throughput_ips"])
        return StageResult({"threads": threads, "device": "cpu", "results": results},
                           f"fastest at batch {best['batch']}: {best['backend']} {best['throughput_ips']:.0f} img/s")
