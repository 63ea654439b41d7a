"""Latency harness: warm-up, then at least 100 timed runs; p50/p90/p99 and throughput.
Several models are timed interleaved, in rounds, with the spread of their round figures.

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
    return {
        "batch": batch,
        "runs": int(t.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "throughput_ips": float(batch * 1000.0 / p50),
    }


def _timed(fn: Callable[[], object], runs: int, *, cuda: bool) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn``."""
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
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def measure(
    fn: Callable[[], object], *, batch: int, warmup: int = 10, runs: int = 100, cuda: bool = False
) -> dict:
    """Time ``fn()`` ``runs`` times after ``warmup`` calls; returns ``summarize`` of the times."""
    if runs < 1:
        raise ValueError("runs must be positive")
    for _ in range(warmup):
        fn()
    return summarize(_timed(fn, runs, cuda=cuda), batch=batch)


ROUNDS = 5


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    batch: int,
    warmup: int = 10,
    runs: int = 100,
    rounds: int = ROUNDS,
    cuda: frozenset[str] = frozenset(),
) -> dict[str, dict]:
    """Time several models side by side: ``runs`` calls each, in ``rounds`` rounds, every round
    timing every model in turn (the order rotating). A machine that slows down for a while (another
    process, a frequency change) then slows every model alike instead of the one being timed, and
    the rounds show how much a figure moves: each result is ``summarize`` of all its calls plus
    ``round_p50_ms``/``round_p90_ms`` (each round's) and ``spread_ms``, the range of its round p50s.
    Two models whose round ranges overlap are not told apart (``within_noise``)."""
    if runs < 1 or rounds < 1:
        raise ValueError("runs and rounds must be positive")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, per_round = list(fns), max(1, -(-runs // rounds))
    rounds_of: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rounds_of[name].append(_timed(fns[name], per_round, cuda=name in cuda))
    results = {}
    for name, parts in rounds_of.items():
        p50s = [float(np.percentile(t, 50)) for t in parts]
        results[name] = {
            **summarize([t for part in parts for t in part], batch=batch),
            "rounds": rounds,
            "round_p50_ms": p50s,
            "round_p90_ms": [float(np.percentile(t, 90)) for t in parts],
            "spread_ms": max(p50s) - min(p50s),
        }
    return results


def within_noise(a: dict, b: dict, statistic: str = "p50_ms") -> bool:
    """Whether two latency cells cannot be told apart: the ranges of their round figures overlap.
    Cells measured without rounds (older records) are told apart by their figure alone."""
    ra, rb = a.get(f"round_{statistic}"), b.get(f"round_{statistic}")
    if not ra or not rb:
        return a[statistic] == b[statistic]
    return min(rb) <= max(ra) and min(ra) <= max(rb)
