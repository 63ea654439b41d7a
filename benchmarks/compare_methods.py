"""CE vs KD vs DIST vs CS-KD (core, paper) on Fashion-MNIST, several seeds, on this machine.

Runs each method through the pipeline itself (one teacher, shared through the
artifact store), reads each student's top-1 on the test split, and writes JSON
plus a Markdown table. Rerunning reuses every finished run from the store.

    python benchmarks/compare_methods.py --root ../shared/data/fashion-mnist --out bench/compare.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.manifest_io import manifest_from_text  # noqa: E402
from pipeline.orchestrator import run_pipeline  # noqa: E402

METHODS = {
    "CE (no teacher)": {"kind": "ce"},
    "KD": {"kind": "kd"},
    "DIST": {"kind": "dist"},
    "CS-KD core": {"kind": "cskd", "preset": "core"},
    "CS-KD paper": {"kind": "cskd", "preset": "paper"},
}


def manifest_text(args, loss: dict, seed: int) -> str:
    train = {"batch_size": 64, "lr": 0.05, "schedule": "cosine", "augment": {"crop_padding": 2, "flip": True}}
    doc = {
        "name": "compare",
        "store": args.store,
        "data": {"name": "fashion_mnist", "root": str(Path(args.root).resolve()),
                 "max_train_samples": args.train_samples, "val_fraction": 0.1},
        "teacher": {"model": args.teacher, "train": {**train, "epochs": args.teacher_epochs, "seed": 0}},
        "student": {"model": args.student, "loss": loss, "train": {**train, "epochs": args.epochs, "seed": seed}},
        "gate": {"max_drop": 100.0},
    }
    return json.dumps(doc)  # JSON is YAML


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/fashion-mnist")
    parser.add_argument("--out", default="bench/compare.json")
    parser.add_argument("--store", default=".cskd-compare")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    rows, runs = [], []
    teacher_top1 = None
    for method, loss in METHODS.items():
        scores = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            outcome = run_pipeline(manifest_from_text(manifest_text(args, loss, seed)), until="validate",
                                   progress=False, echo=lambda line: print("   ", line, flush=True))
            metrics = outcome.artifacts["validate"].metrics
            teacher_top1 = metrics["teacher_top1"]
            scores.append(metrics["student_top1"])
            runs.append({"method": method, "seed": seed, "student_top1": metrics["student_top1"],
                         "wall_s": round(time.perf_counter() - started, 1)})
            print(f"{method:<16} seed {seed}: {metrics['student_top1']:.2f}", flush=True)
        rows.append({"method": method, "mean": statistics.mean(scores),
                     "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "scores": scores})
    env = outcome.artifacts["validate"].record["environment"]
    result = {"setup": vars(args), "teacher_top1": teacher_top1, "split": "test (10,000 images)",
              "rows": rows, "runs": runs, "environment": env}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nteacher {args.teacher}: {teacher_top1:.2f}")
    print("| method | student top-1 (mean ± std) | seeds |\n|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['mean']:.2f} ± {row['std']:.2f} | "
              + ", ".join(f"{s:.2f}" for s in row["scores"]) + " |")


if __name__ == "__main__":
    main()
