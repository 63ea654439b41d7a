"""Speed figures a reader can trust: models timed interleaved in rounds, "fastest" and the gate's
latency rule not telling apart files within each other's noise, and `diff` showing a latency
only when it moved beyond its noise."""

from __future__ import annotations

import time

from exports.latency import measure, measure_interleaved, within_noise
from foundation.backends import fastest_passing
from pipeline.history import diff_runs


def _machine_slowing_down_after(calls: int):
    """Two identical models on a machine that gets four times slower after ``calls`` calls in all
    (another process starting, a frequency drop): whichever is timed then looks slower."""
    count = [0]

    def model():
        count[0] += 1
        time.sleep(0.008 if count[0] > calls else 0.002)

    return model


def test_interleaved_rounds_time_identical_models_alike_on_a_machine_that_slows_down():
    model = _machine_slowing_down_after(25)  # warm-up 5 + 20 timed calls, then slow
    a = measure(model, batch=1, warmup=5, runs=20)
    b = measure(model, batch=1, warmup=5, runs=20)
    assert b["p50_ms"] > 2.5 * a["p50_ms"]  # one after the other: b looks 4x slower than the same model
    model = _machine_slowing_down_after(10 + 20)  # the warm-ups and 20 timed calls (4 per model and round)
    timed = measure_interleaved({"a": model, "b": model}, batch=1, warmup=5, runs=20, rounds=5)
    assert within_noise(timed["a"], timed["b"])  # interleaved: both see the slow rounds
    for cell in timed.values():
        assert cell["runs"] == 20 and cell["rounds"] == 5 and len(cell["round_p50_ms"]) == 5
        assert cell["spread_ms"] == max(cell["round_p50_ms"]) - min(cell["round_p50_ms"]) > 4


def test_the_rounds_rotate_which_model_goes_first():
    order = []
    measure_interleaved({name: (lambda n=name: order.append(n)) for name in "abc"}, batch=1, warmup=0, runs=3,
                        rounds=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def _cell(backend: str, p50: float, rounds: list[float] | None, batch: int = 1) -> dict:
    cell = {"backend": backend, "batch": batch, "p50_ms": p50, "p90_ms": p50 * 1.2}
    if rounds is not None:
        cell.update(round_p50_ms=rounds, round_p90_ms=[r * 1.2 for r in rounds])
    return cell


def test_fastest_does_not_tell_apart_files_within_each_others_noise():
    onnx = _cell("onnx", 1.0, [0.95, 1.0, 1.2])
    results = [_cell("teacher-onnx", 0.1, [0.1, 0.1, 0.1]), onnx, _cell("onnx-int8", 0.97, [0.9, 0.97, 1.1])]
    # int8's p50 is lower, but inside onnx's noise: the first in the manifest's order, every time
    assert fastest_passing(results, [], batch=1)["backend"] == "onnx"
    assert fastest_passing(results, [], batch=1, statistic="p90_ms")["backend"] == "onnx"
    clearly = [onnx, _cell("onnx-int8", 0.5, [0.45, 0.5, 0.55])]
    assert fastest_passing(clearly, [], batch=1)["backend"] == "onnx-int8"
    failed = [{"rule": "onnx-int8 budget", "target": "onnx-int8", "passed": False}]
    assert fastest_passing(clearly, failed, batch=1)["backend"] == "onnx"
    # records from before the rounds: the lowest figure, as before
    assert fastest_passing([_cell("onnx", 1.0, None), _cell("onnx-int8", 0.97, None)], [], batch=1)["backend"] \
        == "onnx-int8"


def _report(run: str, cells: list[dict], lr: float = 0.05) -> dict:
    return {"run": {"id": run}, "manifest": {"student": {"train": {"lr": lr}}}, "metrics": {"student_top1": 97.0},
            "latency": {"results": cells}, "gate": {"passed": True, "rules": []}}


def test_diff_shows_a_latency_only_when_it_moved_beyond_its_noise():
    a = _report("A", [_cell("onnx", 1.0, [0.9, 1.0, 1.1]), _cell("openvino", 2.0, [1.9, 2.0, 2.1])])
    b = _report("B", [_cell("onnx", 1.05, [0.95, 1.05, 1.15]), _cell("openvino", 3.0, [2.9, 3.0, 3.1])], lr=0.02)
    rows = {r.key: r for r in diff_runs(a, b)}
    assert set(rows) == {"manifest.student.train.lr", "latency.openvino.batch1.p50_ms"}
    assert rows["latency.openvino.batch1.p50_ms"].change == "+1.00 (+50%)"
    assert rows["manifest.student.train.lr"].change == "-0.03"
    everything = {r.key: r for r in diff_runs(a, b, everything=True)}
    assert everything["latency.onnx.batch1.p50_ms"].noise and everything["latency.onnx.batch1.p50_ms"].change
    assert everything["metrics.student_top1"].change == "" and not everything["metrics.student_top1"].noise
