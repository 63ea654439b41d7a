"""CPU latency of every CPU back-end: ONNX Runtime FP32 and INT8 against OpenVINO FP32 and INT8.

Two models: the quickstart's student (resnet8, 1x8x8 digits) and resnet8x4 at
3x32x32 (CIFAR size), untrained (latency does not depend on the weights' values;
the INT8 models are calibrated on random images). All cells in one process, side
by side, same thread count, median of ``--runs`` timed runs after a warm-up.
Writes JSON and prints a Markdown table with ratios to ONNX Runtime FP32.

    python benchmarks/backends.py --out bench/backends.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cskd.models import Preprocessed, create_model  # noqa: E402
from exports.latency import measure  # noqa: E402
from exports.onnx_export import export_onnx  # noqa: E402
from exports.openvino import compile_ir, convert_to_ir  # noqa: E402
from exports.openvino import run_batched as ov_run  # noqa: E402
from exports.ort_runtime import create_session, run_batched  # noqa: E402
from exports.quantize import Int8Settings, preprocess, quantize_int8  # noqa: E402

MODELS = {"quickstart resnet8 1x8x8": ("resnet8", 1, 8), "resnet8x4 3x32x32": ("resnet8x4", 3, 32)}


def build(name: str, channels: int, size: int, folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = Preprocessed(create_model(name, num_classes=10, in_channels=channels), mean=(0.5,) * channels,
                         std=(0.25,) * channels).eval()
    fp32 = export_onnx(model, sample=torch.zeros(2, channels, size, size), path=folder / "fp32.onnx")
    prepared = preprocess(fp32, folder / "prepared.onnx")
    calibration = np.random.default_rng(0).random((256, channels, size, size), dtype=np.float32)
    int8 = quantize_int8(prepared, folder / "int8.onnx", calibration_images=calibration, settings=Int8Settings())
    return {"fp32": fp32, "int8": int8, "ov_fp32": convert_to_ir(fp32, folder / "fp32.xml"),
            "ov_int8": convert_to_ir(int8, folder / "int8.xml")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/backends.json")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = []
    for label, (name, channels, size) in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(name, channels, size, Path(tmp))
            runners = {
                "onnxruntime-fp32": lambda x, s=create_session(paths["fp32"], threads=args.threads): run_batched(s, x),
                "onnxruntime-int8": lambda x, s=create_session(paths["int8"], threads=args.threads): run_batched(s, x),
                "openvino-fp32": lambda x, c=compile_ir(paths["ov_fp32"], threads=args.threads): ov_run(c, x),
                "openvino-int8": lambda x, c=compile_ir(paths["ov_int8"], threads=args.threads): ov_run(c, x),
            }
            for batch in (1, 64):
                images = np.random.default_rng(1).integers(0, 256, (batch, channels, size, size), dtype=np.uint8)
                cells = {b: measure(lambda r=r, x=images: r(x), batch=batch, warmup=20, runs=args.runs)
                         for b, r in runners.items()}
                base = cells["onnxruntime-fp32"]["p50_ms"]
                for backend, cell in cells.items():
                    results.append({"model": label, "backend": backend, "batch": batch, "p50_ms": cell["p50_ms"],
                                    "p90_ms": cell["p90_ms"], "vs_ort_fp32": base / cell["p50_ms"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "runs": args.runs, "results": results},
                                         indent=2) + "\n")
    print("| model | runtime | batch | p50 ms | p90 ms | vs ORT FP32 |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['vs_ort_fp32']:.2f}x |")


if __name__ == "__main__":
    main()
