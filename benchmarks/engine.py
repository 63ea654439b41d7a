"""Training throughput of the classic and fast engines: resnet32x4 -> resnet8x4 distillation
with the CS-KD core and paper objectives, at batch 64 and 128, on the current device.

Data: a synthetic CIFAR-shaped uint8 set resident on the device (augmentation runs
on the device as in training). Reports images/s and the projected time of 240
epochs of 50,000 images. GPU timings use CUDA events around the timed steps.

    python benchmarks/engine.py --out bench/engine.json            # CPU here
    python benchmarks/engine.py --device cuda --out bench/engine.json --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cskd.classic_step import classic_step  # noqa: E402
from cskd.config import TrainConfig  # noqa: E402
from cskd.data.datasets import Split  # noqa: E402
from cskd.data.loader import DeviceLoader  # noqa: E402
from cskd.fast_engine import FastStep  # noqa: E402
from cskd.models import create_model  # noqa: E402
from cskd.objectives import CSKDCore, CSKDPaper  # noqa: E402


def run(engine: str, preset: str, batch: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    student = create_model("resnet8x4", num_classes=100).to(device)
    teacher = create_model("resnet32x4", num_classes=100).to(device)
    bf16 = device.type == "cuda"
    if bf16:  # the fast GPU recipe: bf16 autocast + channels_last
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    objective = (CSKDPaper if preset == "paper" else CSKDCore)(student, teacher).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    config = TrainConfig(epochs=1, batch_size=batch, precision="bf16" if bf16 and engine == "fast" else "fp32",
                         engine=engine)
    step = (FastStep(objective, optimizer, device=device, bf16=config.precision == "bf16") if engine == "fast"
            else classic_step(objective, optimizer, device, config))
    n = batch * (args.steps + args.warmup)
    data = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 100, (n,)))
    loader = DeviceLoader(data, batch_size=batch, device=device, crop_padding=4, flip=True,
                          strong=preset == "paper", seed=0)
    batches = iter(loader)
    for _ in range(args.warmup):
        weak, labels, strong = next(batches)
        out = step(weak, labels, strong, lr=0.025, epoch=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        weak, labels, strong = next(batches)
        out = step(weak, labels, strong, lr=0.025, epoch=1)
    float(out["loss"])  # one sync at the end
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ips = batch * args.steps / seconds
    return {"engine": engine, "objective": preset, "batch": batch, "steps": args.steps, "images_per_s": ips,
            "projected_240_epochs_h": 240 * 50_000 / ips / 3600, "precision": config.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/engine.json")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 200 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    device = torch.device(args.device)
    args.steps = args.steps or (200 if device.type == "cuda" else 5)
    args.warmup = args.warmup if args.warmup is not None else (20 if device.type == "cuda" else 1)
    rows = []
    for preset in ("core", "paper"):
        for batch in args.batches:
            for engine in ("classic", "fast"):
                row = run(engine, preset, batch, args, device)
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in rows:
        classic = next(r for r in rows if r["engine"] == "classic" and r["objective"] == row["objective"]
                       and r["batch"] == row["batch"])
        row["speedup_vs_classic"] = row["images_per_s"] / classic["images_per_s"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": device_name, "torch": torch.__version__, "pair": "resnet32x4 -> resnet8x4", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| objective | batch | engine | images/s | vs classic | 240 epochs (h) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['objective']} | {r['batch']} | {r['engine']} | {r['images_per_s']:.0f} | "
              f"{r['speedup_vs_classic']:.2f}x | {r['projected_240_epochs_h']:.2f} |")


if __name__ == "__main__":
    main()
