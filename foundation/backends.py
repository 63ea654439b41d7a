"""The deployment back-end registry: one ``Backend`` per export target, and the
settings under the manifest's ``export:`` that back-ends own.

A back-end module under ``exports/`` holds the runtime; its stage module under
``stages/`` builds the artifact, registers the target here, and registers the
keys of ``export:`` it reads (``EXPORT_SETTINGS.register("trt", TrtSection, ...)``,
``foundation/sections.py``), each with its own pydantic type. Everything that lists targets (the
manifest's ``export.targets``, the CLI's ``--target``, the validate and latency stages, the
gate's per-artifact budgets, the shipped bundle, ``cskd-pipeline schema``) reads
these registries, so adding a back-end touches no other module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exports.latency import within_noise

if TYPE_CHECKING:
    import numpy as np

    from foundation.artifact import Artifact

# uint8 images [N, C, H, W] -> float32 logits [N, classes]
Runner = Callable[["np.ndarray"], "np.ndarray"]


@dataclass(frozen=True)
class Backend:
    target: str  # the name in export.targets and `export --target`
    kind: str  # the stage kind whose artifact holds the model
    file: str  # the model file inside that artifact
    load: Callable[..., Runner]  # load(artifacts by kind, batch_size=, threads=) -> Runner
    # budget(export section): top-1 points it may lose against the FP32 student, read from its own
    # settings
    budget: Callable[[Any], float] | None = None
    # bundle file name -> file in the artifact
    shipped: dict[str, str] = field(default_factory=dict)
    # requires(export section): the targets it is built from (they must be in export.targets too)
    requires: Callable[[Any], tuple[str, ...]] = lambda export: ()
    # check(export section): why these settings cannot build it (one line), or None
    check: Callable[[Any], str | None] = lambda export: None
    device: str = "cpu"  # "cuda": timed with CUDA events
    description: str = ""
    # why this target cannot be built here (its runtime is not installed, with the install line),
    # or None when it can: `targets` and `export.targets: auto` read it
    missing: Callable[[], str | None] = lambda: None
    # export.targets: auto takes the target only where this device is present ("cuda": a GPU)
    auto_device: str = "cpu"
    # probe(files, out, export section, calibration images): build this target's file at ``out``
    # from the
    # files of the targets it is built from (``files`` by target, "onnx" always among them) for an
    # untrained network, so `search` can time it before training (latency does not depend on the
    # weights); None: the target is not probed, and a candidate is never dropped on its account
    probe: Callable[[dict, Any, Any, Any], None] | None = None

    def runner(
        self, artifacts: dict[str, Artifact], *, batch_size: int = 256, threads: int | None = None
    ) -> Runner:
        return self.load(artifacts, batch_size=batch_size, threads=threads)


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    known = _BACKENDS.get(backend.target)
    if known is not None and known.kind != backend.kind:
        raise TypeError(f"export target {backend.target!r} is registered twice")
    _BACKENDS[backend.target] = backend
    return backend


def backends() -> dict[str, Backend]:
    """Registered back-ends by target name, in registration order."""
    if not _BACKENDS:
        raise RuntimeError("no export back-ends are registered; import the 'stages' package first")
    return dict(_BACKENDS)


def backend(target: str) -> Backend:
    return backends()[target]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a start-up stays fast)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    # a parent package is missing, or the module is blocked (None)
    except (ImportError, ValueError):
        return False


def auto_targets(export: Any) -> tuple[list[str], dict[str, str]]:
    """``export.targets: auto``: every registered target whose runtime is installed and whose
    device is present, in registration order, and why each other target was left out."""
    import torch

    gpu = torch.cuda.is_available()
    left_out: dict[str, str] = {}
    for name, entry in backends().items():
        reason = entry.missing()
        if reason is None and entry.auto_device == "cuda" and not gpu:
            reason = "no CUDA GPU here"
        if reason is not None:
            left_out[name] = reason
    chosen = [name for name in backends() if name not in left_out]
    while absent := {
        t: r for t in chosen for r in backends()[t].requires(export) if r not in chosen
    }:
        for target, source in absent.items():  # built from a target that is left out
            left_out[target] = f"built from {source}, which is left out"
        chosen = [name for name in chosen if name not in absent]
    return chosen, left_out


# gate.latency.backend: judge the quickest artifact that passed its accuracy rules
FASTEST = "fastest"
# the teacher exported to ONNX FP32 and timed in ONNX Runtime, never shipped
TEACHER_ONNX = "teacher-onnx"
NOT_SHIPPED = ("teacher-eager", TEACHER_ONNX)  # timed for the report's comparison only


def fastest_passing(
    results: list[dict], rules: list[dict], *, batch: int, statistic: str = "p50_ms"
) -> dict | None:
    """The latency cell (``latency.json``'s ``results``) with the lowest ``statistic`` at ``batch``
    among the student's artifacts whose accuracy rules all passed. A rule judges an artifact
    when its ``target`` names it; an artifact without such a rule (the PyTorch student) counts as
    passing. Cells within the noise of the quickest (their round figures overlap) are not told
    apart: of those, the first measured wins (the manifest's target order), so two runs of the same
    models name the same file. The gate's latency rule and the report both choose with this."""
    failed = {r["target"] for r in rules if r.get("target") and not r["passed"]}
    cells = [
        c
        for c in results
        if c["batch"] == batch and c["backend"] not in failed and c["backend"] not in NOT_SHIPPED
    ]
    quickest = min(cells, key=lambda c: c[statistic], default=None)
    if quickest is None:
        return None
    return next(c for c in cells if within_noise(c, quickest, statistic))


def unregister_backend(target: str) -> None:
    """Remove a target (a test's own back-end, when the test ends)."""
    _BACKENDS.pop(target, None)
