"""The paper preset's strong view alone, on the CPU: each RandAugment op applied once to the
samples that drew it (gather, apply, scatter: the default) against every op on the whole batch
picked with ``torch.where`` (the path a CUDA graph capture takes), the same draws and the same
output, side by side in one process, interleaved rounds.

    python benchmarks/strong_view.py --out bench/strong_view.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cskd.data.augment import strong_view  # noqa: E402
from exports.cpu import recorded_flags  # noqa: E402


def images_per_s(x: torch.Tensor, *, select_all: bool, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(repeats):
        strong_view(x, gen, padding=4, flip=True, select_all=select_all)
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/strong_view.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch in (64, 128):
        x = torch.randint(0, 256, (batch, 3, 32, 32)).float() / 255.0
        same = torch.equal(strong_view(x, torch.Generator().manual_seed(1), padding=4, flip=True, select_all=True),
                           strong_view(x, torch.Generator().manual_seed(1), padding=4, flip=True, select_all=False))
        speeds: dict[str, list[float]] = {"every op, torch.where": [], "gather, apply, scatter": []}
        for _ in range(args.rounds):
            speeds["every op, torch.where"].append(images_per_s(x, select_all=True, repeats=args.repeats))
            speeds["gather, apply, scatter"].append(images_per_s(x, select_all=False, repeats=args.repeats))
        median = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
        rows.append({"batch": batch, "images_per_s": {k: round(v) for k, v in median.items()}, "same_output": same,
                     "speedup": round(median["gather, apply, scatter"] / median["every op, torch.where"], 2)})
        print(f"batch {batch}: {rows[-1]}", flush=True)
    result = {"cpu_flags": recorded_flags(), "threads": args.threads, "torch": torch.__version__,
              "input": [3, 32, 32], "rounds": args.rounds, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
