"""Quantization-aware distillation against post-training INT8 on a real pair, and the latency of
the two INT8 models side by side.

For each seed (the student's training seed), through the pipeline and its store: the
post-training drop (``qad.when: never``), then QAD with the student's own loss (CS-KD) and with
KD (``qad.when: always``), each drop in val and test top-1 against the FP32 student. Then
ONNX Runtime latency of the PTQ and the QAD INT8 models of the first seed, in one process.

    python benchmarks/qad.py --manifest benchmarks/qad-fashion.yaml --root ../shared/data/fashion-mnist \\
        --seeds 3 --sweep-epochs 4,8 --out bench/qad.json

``--sweep-epochs`` reruns QAD (CS-KD) on one seed with more epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run(manifest: Path, overrides: list[str]) -> dict:
    args = [sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "-q", *sum((["-o", o] for o in overrides), [])]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    name = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("report:"))
    report = json.loads(Path(name).with_name("report.json").read_text())
    return report


def _cell(report: dict) -> dict:
    quant = report["quantization"]
    exports = report["metrics"]["exports"]
    return {"test_fp32_top1": exports["onnx"]["top1"], "test_int8_top1": exports["onnx-int8"]["top1"],
            "test_drop": exports["onnx"]["top1"] - exports["onnx-int8"]["top1"], "quantize": quant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path(__file__).with_name("qad-fashion.yaml"))
    parser.add_argument("--root", required=True, help="the Fashion-MNIST folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="bench/qad.json")
    parser.add_argument("--sweep-epochs", default="", help="comma-separated QAD epochs to try on --sweep-seed (CS-KD)")
    parser.add_argument("--sweep-seed", type=int, default=0)
    args = parser.parse_args()
    base = [f"data.root={args.root}"]
    cells = []
    for seed in range(args.seeds):
        common = [*base, f"student.train.seed={seed}"]
        ptq = _cell(_run(args.manifest, [*common, "export.int8.qad.when=never"]))
        row = {"seed": seed, "ptq": ptq}
        for loss in ("inherit", "kd"):
            row[loss] = _cell(_run(args.manifest, [*common, "export.int8.qad.when=always", f"export.int8.qad.loss={loss}"]))
        print(json.dumps({k: (v if k == "seed" else {kk: vv for kk, vv in v.items() if kk != "quantize"})
                          for k, v in row.items()}), flush=True)
        cells.append(row)
    diffs = [r["inherit"]["test_int8_top1"] - r["kd"]["test_int8_top1"] for r in cells]
    summary = {
        "ptq_test_drop_mean": statistics.mean(r["ptq"]["test_drop"] for r in cells),
        "qad_cskd_test_drop_mean": statistics.mean(r["inherit"]["test_drop"] for r in cells),
        "qad_kd_test_drop_mean": statistics.mean(r["kd"]["test_drop"] for r in cells),
        "cskd_minus_kd_int8_top1": diffs, "cskd_minus_kd_mean": statistics.mean(diffs),
    }
    if len(diffs) > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        summary["cskd_minus_kd_ci95"] = [summary["cskd_minus_kd_mean"] - half, summary["cskd_minus_kd_mean"] + half]
    sweep = []  # does a longer QAD close the gap where 2 epochs did not?
    for epochs in (int(e) for e in args.sweep_epochs.split(",") if e):
        overrides = [*base, f"student.train.seed={args.sweep_seed}", "export.int8.qad.when=always",
                     f"export.int8.qad.epochs={epochs}"]
        cell = _cell(_run(args.manifest, overrides))
        sweep.append({"seed": args.sweep_seed, "epochs": epochs, **{k: v for k, v in cell.items() if k != "quantize"}})
        print(json.dumps(sweep[-1]), flush=True)
    result = {"cells": cells, "summary": summary, "epochs_sweep": sweep,
              "latency": _latency(args.manifest, [*base, "student.train.seed=0"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(json.dumps(result["latency"], indent=2))


def _latency(manifest: Path, overrides: list[str]) -> dict:
    """PTQ and QAD INT8 models of one seed, timed in this process, alternating, 2 threads."""
    from exports.latency import measure
    from exports.ort_runtime import create_session, run_batched
    from pipeline.manifest_io import load_manifest
    from pipeline.orchestrator import plan

    paths = {}
    for label, when in (("ptq", "never"), ("qad", "always")):
        m = load_manifest(manifest, [*overrides, f"export.int8.qad.when={when}"])
        qid = next(p.id for p in plan(m) if p.kind == "quantize")
        paths[label] = Path(m.store) / "artifacts" / "quantize" / qid / "model_int8.onnx"
    rng = np.random.default_rng(0)
    out = {}
    for batch in (1, 64):
        images = rng.integers(0, 255, (batch, 1, 28, 28), dtype=np.uint8)
        sessions = {k: create_session(p, threads=2) for k, p in paths.items()}
        timings = {k: [] for k in sessions}
        for _ in range(5):  # alternate, so both see the same machine
            for k, s in sessions.items():
                timings[k].append(measure(lambda s=s, x=images, b=batch: run_batched(s, x, batch_size=b), batch=batch,
                                          runs=100, warmup=10))
        timings = {k: {"p50_ms": statistics.median(t["p50_ms"] for t in v)} for k, v in timings.items()}
        out[str(batch)] = {k: v["p50_ms"] for k, v in timings.items()}
        out[str(batch)]["qad_over_ptq"] = out[str(batch)]["qad"] / out[str(batch)]["ptq"]
    return out


if __name__ == "__main__":
    main()
