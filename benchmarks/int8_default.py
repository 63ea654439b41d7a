"""What the pipeline's defaults ship on this CPU: the ready CIFAR-10 manifest
(manifests/cifar10-jpeg.yaml: resnet8x4 student, ``export.targets: auto``, ``int8.operators:
auto``, ``export.cpu: auto``) run end to end on a subset of the CIFAR-10 JPEG copy, with no
INT8 setting overridden. Reports the artifact the report names fastest within its budget at
batch 64, its speed against ONNX Runtime FP32 (the latency stage's p50s, one process), its test
top-1 loss against the FP32 student, and what the quantize stage chose and why.

    python benchmarks/int8_default.py --cifar ../shared/data/cifar10-jpeg.tar.gz --out bench/int8_default.json

The teacher is a resnet20 and both trainings are short (CPU-sized): the INT8 loss and the speed
ratios are the point, not the absolute accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from int8_cpu import cifar_folder  # noqa: E402  (benchmarks/ is on the path when run as a script)

from exports.cpu import machine_class, recorded_flags  # noqa: E402


def run_pipeline(folder: Path, work: Path, args) -> Path:
    overrides = {"data.root": str(folder), "data.max_train_samples": args.train_samples,
                 "teacher.model": "resnet20", "teacher.train.epochs": args.epochs,
                 "student.train.epochs": args.epochs, "gate.max_drop": 100}
    command = [sys.executable, "-m", "pipeline.cli", "run", "-m", str(ROOT / "manifests/cifar10-jpeg.yaml"), "-q"]
    for key, value in overrides.items():
        command += ["-o", f"{key}={value}"]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return work / "reports/cifar10-jpeg/latest/report.json"


def summarize(report: dict, batch: int) -> dict:
    cells = {c["backend"]: c for c in report["latency"]["results"] if c["batch"] == batch}
    fastest = report["fastest"][str(batch)]["backend"]
    models = report["metrics"]["models"]
    onnx_p50 = cells["onnx"]["p50_ms"]
    return {"batch": batch, "fastest_within_budget": fastest,
            "speedup_vs_onnx_fp32": round(onnx_p50 / cells[fastest]["p50_ms"], 3),
            "test_top1_loss_vs_fp32_student": round(models["onnx"]["top1"] - models[fastest]["top1"], 2),
            "p50_ms": {name: round(c["p50_ms"], 3) for name, c in cells.items()},
            "speedup": {name: round(onnx_p50 / c["p50_ms"], 3) for name, c in cells.items()},
            "test_top1": {name: round(m["top1"], 2) for name, m in models.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="the CIFAR-10 JPEG copy (folder or .tar.gz)")
    parser.add_argument("--out", default="bench/int8_default.json")
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        work = scratch / "work"
        work.mkdir()
        report = json.loads(run_pipeline(cifar_folder(args.cifar, scratch), work, args).read_text())
        card = json.loads((work / "shipped/cifar10-jpeg/latest/model_card.json").read_text())
    quantize = card["exports"]["quantize"]["metrics"]
    result = {"cpu_flags": recorded_flags(), "cpu_class": machine_class(),
              "manifest": "manifests/cifar10-jpeg.yaml", "train_samples": args.train_samples, "epochs": args.epochs,
              "targets": report["manifest"]["export"]["targets"], "threads": report["latency"]["threads"],
              "int8": {"operators": quantize["operators"], "operators_choice": quantize["operators_choice"],
                       "cpu": quantize["cpu"], "val_drop": quantize["val_drop"], "kept_float": quantize["kept_float"],
                       "qad": quantize["qad"]},
              "batch_64": summarize(report, 64), "batch_1": summarize(report, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    b64 = result["batch_64"]
    print(f"CPU class {result['cpu_class']}; operators {quantize['operators']} ({quantize['operators_choice']['why']})")
    print(f"batch 64: {b64['fastest_within_budget']} {b64['speedup_vs_onnx_fp32']:.2f}x ONNX Runtime FP32, "
          f"test top-1 loss {b64['test_top1_loss_vs_fp32_student']:.2f}")


if __name__ == "__main__":
    main()
