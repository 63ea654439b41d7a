"""Served against in-process: the resnet8x4 CIFAR-10 student (3x32x32, untrained: latency does not
depend on the weights' values) behind `cskd-pipeline serve`, loaded by `cskd-pipeline loadtest`'s
Locust generator in its own process, one image per request.

For each engine (litserve, ray), dynamic batching on (--max-batch 64, 2 ms) and off (--max-batch 1),
1 and 2 replicas (the thread budget split between them), concurrency 1, 8, 32 and 64: throughput
and p50/p99. The reference is ONNX Runtime in this process at batch 64 with the same thread
budget. Ratios are what to quote on a shared CPU (CPU flags recorded beside them).

    python benchmarks/serving_load.py --out bench/serving.json [--duration 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cskd.models import Preprocessed, create_model  # noqa: E402
from exports.cpu import machine_class, recorded_flags  # noqa: E402
from exports.onnx_export import export_onnx  # noqa: E402
from serving.engines import launch_server, stop_server  # noqa: E402
from serving.loadtest import run_load  # noqa: E402
from stages.ship import PREDICT_SCRIPT, add_onnx_metadata  # noqa: E402


def make_bundle(folder: Path) -> Path:
    """A bundle of the resnet8x4 student, as the ship stage lays one out (card, ONNX with metadata,
    predict.py), without a training run."""
    torch.manual_seed(0)
    model = Preprocessed(create_model("resnet8x4", num_classes=10, in_channels=3), mean=(0.5,) * 3,
                         std=(0.25,) * 3).eval()
    folder.mkdir(parents=True)
    export_onnx(model, sample=torch.zeros(2, 3, 32, 32), path=folder / "student.onnx")
    io = {"input": {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0],
                    "shape": ["batch", 3, 32, 32]},
          "output": {"name": "logits", "shape": ["batch", 10]}, "class_names": [str(i) for i in range(10)]}
    add_onnx_metadata(folder / "student.onnx", io)
    (folder / "model_card.json").write_text(json.dumps({"name": "resnet8x4", **io}))
    shutil.copy(PREDICT_SCRIPT, folder / "predict.py")
    return folder


def in_process(bundle: Path, threads: int, seconds: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(bundle / "student.onnx"), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    for _ in range(3):
        session.run(None, {"images": batch})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"images": batch})
        done += 64
    return done / (time.perf_counter() - start)


def summarise(rows: list[dict]) -> dict:
    """The issue's goal per engine at concurrency 32 (binary tensors): the best configuration's
    throughput against in-process and its p99/p50, and batching's gain (on against off)."""
    out = {}
    for engine in sorted({r["engine"] for r in rows}):
        at32 = [r for r in rows if r["engine"] == engine and r["concurrency"] == 32 and r["tensors"] == "binary"]
        if not at32:
            continue
        best = max(at32, key=lambda r: r["throughput_rps"])
        gain = {}
        for replicas in (1, 2):
            cell = {r["batching"]: r["throughput_rps"] for r in at32 if r["replicas"] == replicas}
            if {"on", "off"} <= cell.keys():
                gain[f"{replicas}_replicas"] = cell["on"] / cell["off"]
        out[engine] = {"best_at_32": {k: best[k] for k in ("batching", "replicas", "throughput_rps", "p50_ms",
                                                          "p99_ms")},
                       "vs_in_process": best["vs_in_process"], "p99_over_p50": best["p99_ms"] / best["p50_ms"],
                       "batching_gain_at_32": gain}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/serving.json")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per load level")
    parser.add_argument("--threads", type=int, default=2, help="the thread budget of the server")
    parser.add_argument("--engines", nargs="+", default=["litserve", "ray"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        reference = in_process(bundle, args.threads, args.duration)
        print(f"in-process ONNX Runtime, batch 64, {args.threads} threads: {reference:.0f} images/s", flush=True)
        for engine in args.engines:
            for batching, max_batch in (("on", 64), ("off", 1)):
                for replicas in (1, 2):
                    threads = max(1, args.threads // replicas)
                    process, url = launch_server(bundle, Path(tmp), "--engine", engine, "--replicas", str(replicas),
                                                   "--max-batch", str(max_batch), "--batch-wait-ms", "2",
                                                   "--threads-per-replica", str(threads))
                    try:
                        # JSON tensors once, beside the binary extension, where the goal is judged
                        json_too = [(32, False)] if (batching, replicas) == ("on", 1) else []
                        for concurrency, binary in [(c, True) for c in args.concurrency] + json_too:
                            load = run_load({"url": url, "model": "resnet8x4", "concurrency": concurrency,
                                             "duration_s": args.duration, "binary": binary})
                            row = {"engine": engine, "batching": batching, "replicas": replicas,
                                   "threads_per_replica": threads, "concurrency": concurrency,
                                   "tensors": load["tensors"],
                                   **{k: load[k] for k in ("requests", "failures", "throughput_rps", "p50_ms",
                                                           "p90_ms", "p99_ms")},
                                   "vs_in_process": load["throughput_rps"] / reference}
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                    finally:
                        stop_server(process)
        # measured again at the end: a load that came and went during the first measurement would
        # inflate every ratio; the higher of the two is what the runtime can do on this machine
        again = in_process(bundle, args.threads, args.duration)
        print(f"in-process again at the end: {again:.0f} images/s", flush=True)
        if again > reference:
            for row in rows:
                row["vs_in_process"] = row["throughput_rps"] / again
        references, reference = [reference, again], max(reference, again)
    result = {"benchmark": "serving", "summary": summarise(rows), "model": "resnet8x4 3x32x32, untrained",
              "in_process_images_per_s": reference, "in_process_start_and_end": references,
              "threads": args.threads, "duration_s": args.duration, "cpu_class": machine_class(),
              "cpu_flags": recorded_flags(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
