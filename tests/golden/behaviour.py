"""What each stage kind computes, on a fixed tiny input and seed: its behaviour, pinned.

An artifact id covers a stage's version, not its code: a change in what a stage computes with no
version bump would let the store hand back what the old code made. ``tests/pipeline/
test_behaviour_digests.py`` recomputes this and compares it with ``behaviour.json``, keyed by
kind and version. After bumping a stage's version (because its behaviour changed on purpose),
regenerate the table with the explicit command:

    python -m tests.golden.behaviour --write

Floats are compared within ``RTOL``/``ATOL``: what the table pins is behaviour, not the last bits
in which a CPU's kernels (AVX2 or AVX-512) differ (a loss term near 1e-7 is float noise on both).
The strong view's pixels (a sha256 of its 8-bit values) and the graphs' operators compare exactly.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

TABLE = Path(__file__).with_name("behaviour.json")
RTOL, ATOL = 1e-3, 1e-5


def _round(values) -> list[float]:
    return [float(v) for v in values]


def differences(expected: object, actual: object, where: str = "") -> list[str]:
    """Where ``actual`` departs from ``expected``: floats beyond RTOL/ATOL, anything else at all."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(set(expected) | set(actual))
        return [d for k in keys for d in differences(expected.get(k), actual.get(k), f"{where}.{k}".lstrip("."))]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float):
        return [] if abs(expected - actual) <= ATOL + RTOL * abs(expected) else [f"{where}: {expected!r} -> {actual!r}"]
    return [] if expected == actual else [f"{where}: {str(expected)[:60]} -> {str(actual)[:60]}"]


def _net(seed: int, channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, classes))


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2311)
    return torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.arange(8) % 10


def strong_view_digest() -> dict:
    from cskd.data.augment import strong_view

    images, _ = _images()
    out = strong_view(images.float() / 255.0, torch.Generator().manual_seed(7), padding=2, flip=True)
    pixels = torch.round(out * 255.0).to(torch.uint8)  # the ops are PIL-exact on 8-bit values
    return {"strong_view": hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()}


def training_step(loss: dict) -> dict:
    """One SGD step of a tiny student against a tiny teacher under ``loss``: the loss and its terms,
    and the student's weights after the step."""
    from cskd.data.augment import strong_view
    from cskd.loss_registry import build_objective, parse_loss

    images, labels = _images()
    student, teacher = _net(0), _net(1).eval()
    objective = build_objective(parse_loss(loss), student, teacher)
    strong = None
    if getattr(objective, "needs_strong_view", False):
        strong = strong_view(images.float() / 255.0, torch.Generator().manual_seed(7), padding=2, flip=True)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    out = objective(images.float() / 255.0, labels, strong=strong, epoch=torch.tensor(1.0))  # as the engine passes it
    out["loss"].backward()
    optimizer.step()
    terms = {k: _round([v.detach().float().mean()])[0] for k, v in sorted(out.items())
             if k != "output" and isinstance(v, torch.Tensor) and v.numel() == 1}
    weights = _round(p.detach().double().abs().sum() for p in student.parameters())
    return {"terms": terms, "weights": weights}


def export_graph(folder: Path) -> tuple[Path, dict]:
    import onnx

    from exports.onnx_export import export_onnx

    path = export_onnx(_net(0).eval(), sample=torch.zeros(1, 3, 16, 16), path=folder / "tiny.onnx", opset=18)
    graph = onnx.load(str(path)).graph
    return path, {"ops": [n.op_type for n in graph.node], "inputs": [i.name for i in graph.input],
                  "outputs": [o.name for o in graph.output]}


def int8_graph(float_path: Path, folder: Path) -> dict:
    import onnx

    from exports.quantize import Int8Settings, quantize_int8

    calibration = (_images()[0].float() / 255.0).numpy().astype(np.float32)
    out = quantize_int8(float_path, folder / "tiny_int8.onnx", calibration_images=calibration,
                        settings=Int8Settings(reduce_range=True))
    graph = onnx.load(str(out)).graph
    return {"ops": [n.op_type for n in graph.node],
            "initializers": sorted([i.name, i.data_type] for i in graph.initializer)}


def behaviour() -> dict[str, dict]:
    """{stage kind: {"version": the stage's version, "behaviour": what it computes}}."""
    import stages  # noqa: F401 - the stage registry
    from cskd.loss_registry import LOSS_PRESETS
    from foundation.contracts import registered_stages

    with tempfile.TemporaryDirectory() as tmp:
        float_path, export = export_graph(Path(tmp))
        int8 = int8_graph(float_path, Path(tmp))
    computed = {
        "teacher": {"ce_step": training_step({"kind": "ce"})},
        "distill": {**strong_view_digest(), **{name: training_step(loss) for name, loss in LOSS_PRESETS.items()}},
        "export": export,
        "quantize": int8,
    }
    return {kind: {"version": registered_stages()[kind].version, "behaviour": value} for kind, value in computed.items()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.golden.behaviour --write   (after bumping the version of a stage whose "
                 "behaviour changed on purpose)")
    TABLE.write_text(json.dumps(behaviour(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
