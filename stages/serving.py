"""Serving: the student as it will be deployed. The chosen export is served by ``cskd-pipeline
serve`` on 127.0.0.1 (dynamic batching on), ``cskd-pipeline loadtest``'s Locust generator loads it
from a process of its own at each concurrency of ``latency.serving``, and the figures sit beside
the latency stage's in-process ones (the report's "served against in-process" table). The gate
may judge them (``gate.serving``).

The server serves a bundle: a temporary one with the files ``ship`` would put there (model card,
the target's files), removed when the stage ends.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cskd.config import Strict
from foundation.backends import FASTEST, backend, fastest_passing
from foundation.bundle_seal import seal_bundle
from foundation.contracts import Stage, StageContext, StageResult
from foundation.environment import environment
from foundation.errors import MissingBackend
from foundation.files import sha256_file
from foundation.manifest import Manifest
from foundation.records import BundleRecord, ServingRecord
from stagekit.bundle_io import describe_io
from stagekit.gate_rules import export_budgets, export_rules
from stagekit.serving_section import ServingSection

RESULT_FILE = "serving.json"


class ServingConfig(Strict):
    serving: ServingSection
    name: str  # the model's name on the server, as `serve` names a shipped bundle
    targets: list[str]
    budgets: dict[str, float]  # the accuracy budgets that decide which file is "fastest"
    min_onnx_agreement: float
    machine: dict  # timings belong to the machine


def servable(target: str) -> bool:
    """A target the serving runner loads (ONNX Runtime or OpenVINO on the CPU)."""
    entry = backend(target)
    return entry.device == "cpu" and any(name.endswith((".onnx", ".xml")) for name in entry.shipped)


def choose_target(config: ServingConfig, validate: dict, latency: dict) -> str:
    """The configured target, or the fastest servable file within its accuracy budget at the
    largest latency batch (what the report recommends)."""
    if config.serving.target != FASTEST:
        return config.serving.target
    rules = export_rules(config.min_onnx_agreement, config.budgets, validate)
    cells = [
        c for c in latency["results"] if c["backend"] in config.targets and servable(c["backend"])
    ]
    cell = fastest_passing(cells, rules, batch=max(c["batch"] for c in latency["results"]))
    return cell["backend"] if cell else "onnx"


def write_bundle(folder: Path, name: str, target: str, ctx: StageContext) -> None:
    """The part of a shipped bundle the server reads: the card's name, input/output spec and file
    list, and the target's files (plus ONNX), sealed as a shipped bundle is: `serve` verifies
    whatever it serves, this bundle too (its files come from the verified store inputs)."""
    folder.mkdir()
    for entry in [backend(t) for t in dict.fromkeys((target, "onnx"))]:
        for shipped, inner in entry.shipped.items():
            shutil.copyfile(ctx.inputs[entry.kind].file(inner), folder / shipped)
    files = {path.name: sha256_file(path) for path in sorted(folder.iterdir())}
    (folder / BundleRecord.CARD).write_text(
        json.dumps({"name": name, **describe_io(ctx.inputs), "files": files}) + "\n"
    )
    seal_bundle(folder)


class ServingStageRecord(ServingRecord):
    target: str  # the back-end served (the fastest that passed its budget)
    engine: str


class ServingStage(Stage):
    kind = "serving"
    version = 1
    Config = ServingConfig
    Record = ServingStageRecord

    @classmethod
    def configure(cls, manifest: Manifest) -> ServingConfig | None:
        if manifest.latency is None or manifest.latency.serving is None:
            return None
        env = environment()
        return ServingConfig(
            serving=manifest.latency.serving,
            name=manifest.name,
            targets=manifest.export.targets,
            budgets=export_budgets(manifest),
            min_onnx_agreement=manifest.gate.min_onnx_agreement,
            machine={"device": env["device"], "platform": env["platform"]},
        )

    def inputs(self, config: ServingConfig) -> tuple[str, ...]:
        return ("validate", "latency", *dict.fromkeys(backend(t).kind for t in config.targets))

    def run(self, config: ServingConfig, ctx: StageContext) -> StageResult:
        from serving.engines import ENGINES, launch_server, stop_server
        from serving.loadtest import run_load

        section = config.serving
        missing = ENGINES[section.engine].missing()
        if missing is not None:
            raise MissingBackend(f"latency.serving (engine {section.engine}): {missing}")
        latency = ctx.inputs["latency"].metrics
        target = choose_target(config, ctx.inputs["validate"].metrics, latency)
        # the thread budget of the in-process figures (latency.threads, or torch's default there)
        per_replica = max(1, latency["threads"] // section.replicas)
        rows = []
        with tempfile.TemporaryDirectory(prefix="cskd-serving-") as tmp:
            write_bundle(Path(tmp) / "bundle", config.name, target, ctx)
            process, url = launch_server(
                Path(tmp) / "bundle",
                Path(tmp),
                "--target",
                target,
                "--engine",
                section.engine,
                "--replicas",
                str(section.replicas),
                "--max-batch",
                str(section.max_batch),
                "--batch-wait-ms",
                str(section.batch_wait_ms),
                "--threads-per-replica",
                str(per_replica),
            )
            try:
                for level in section.concurrency:
                    load = run_load(
                        {
                            "url": url,
                            "model": config.name,
                            "concurrency": level,
                            "duration_s": section.duration_s,
                        }
                    )
                    rows.append(
                        {
                            k: load[k]
                            for k in (
                                "concurrency",
                                "requests",
                                "failures",
                                "throughput_rps",
                                "p50_ms",
                                "p90_ms",
                                "p99_ms",
                                "errors",
                            )
                        }
                    )
            finally:
                stop_server(process)
        in_process = {
            c["batch"]: {k: c[k] for k in ("p50_ms", "p99_ms", "throughput_ips")}
            for c in latency["results"]
            if c["backend"] == target
        }
        result = {
            "target": target,
            "engine": section.engine,
            "replicas": section.replicas,
            "threads_per_replica": per_replica,
            "max_batch": section.max_batch,
            "batch_wait_ms": section.batch_wait_ms,
            "duration_s": section.duration_s,
            "rows": rows,
            "in_process": in_process,
        }
        (ctx.out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        top = max(rows, key=lambda r: r["concurrency"])
        best_batch = max(in_process, key=int) if in_process else None
        share = (
            f" ({100 * top['throughput_rps'] / in_process[best_batch]['throughput_ips']:.0f}% of "
            f"in-process at batch {best_batch})"
            if best_batch
            else ""
        )
        return StageResult(
            result,
            f"{target} served by {section.engine}: {top['throughput_rps']:.0f} req/s at "
            f"concurrency {top['concurrency']}{share}, p99 {top['p99_ms']:.0f} ms, "
            f"{sum(r['failures'] for r in rows)} failed",
        )
