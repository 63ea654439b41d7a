"""Latency harness: warm-up, then at least 100 timed runs; p50/p90/p99 and throughput.

CPU timings use ``time.perf_counter_ns`` around each call; GPU timings use CUDA
events recorded on the current stream (pass ``cuda=True``), so they measure
device time without a host round-trip per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def summarize(times_ms: list[float] | np.ndarray, *, batch: int) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"batch": batch, "runs": int(t.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(t.mean()), "min_ms": float(t.min()),
            "throughput_ips": float(batch * 1000.0 / p50)}


def measure(fn: Callable[[], object], *, batch: int, warmup: int = 10, runs: int = 100, cuda: bool = False) -> dict:
    """Time ``fn()`` ``runs`` times after ``warmup`` calls; returns ``summarize`` of the times."""
    if runs < 1:
        raise ValueError("runs must be positive")
    for _ in range(warmup):
        fn()
    if cuda:
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        torch.cuda.synchronize()
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    else:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(times, batch=batch)
