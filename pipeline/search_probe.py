"""The search's probe: each candidate's untrained network exported to every target that can be built
without training and timed at the budget's batch, before anything trains (latency does not depend on
the weights). The figures are kept in the store, sealed and keyed by the machine."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from foundation.errors import ManifestError
from foundation.manifest import Manifest
from foundation.search_section import Candidate

PROBE_CALIBRATION_IMAGES = 16  # random pixels: an untrained INT8 file is timed, never judged
PROBE_KIND, PROBE_VERSION = "search_probe", 1  # the store's kind for a probe's figures


class _Folder:
    """What a back-end's loader reads an artifact through (``.file(name)``), for a probe's files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def file(self, name: str) -> Path:
        return self.folder / name


def _probe_id(base: Manifest, candidate: Candidate, threads: int) -> str:
    """What a probe's figures depend on: the network, the data's shape, the export settings, the
    batch, the threads and the machine (timings belong to it, as the latency stage's do)."""
    import hashlib

    from foundation.contracts import recipe
    from foundation.environment import environment

    env = environment()
    key = {"version": PROBE_VERSION, "model": candidate.model, "data": recipe(base.data.source()),
           "export": base.export.model_dump(mode="json"), "batch": base.search.budget.latency.batch,
           "threads": threads, "machine": {"device": env["device"], "platform": env["platform"],
                                           "cpu_count": os.cpu_count()}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def probe(base: Manifest, candidates: list[Candidate], echo: Callable[[str], None]) -> dict[str, dict]:
    """Each candidate's untrained files timed at the budget's batch, side by side in this process:
    ``{name: {"p90_ms": {target: ms}, "unprobed": [targets], "fastest_ms", "dropped"}}``. The figures
    are kept in the store (kind ``search_probe``, sealed and verified like any artifact), so a rerun
    times nothing again. A candidate whose network does not take the data's images is a
    ``ManifestError``."""
    import torch

    from foundation.store import ArtifactStore

    search, store = base.search, ArtifactStore(base.store)
    limit = search.budget.latency.max_p90_ms * (1 + search.prescreen_slack)
    threads = (base.latency.threads if base.latency else None) or torch.get_num_threads()
    found: dict[str, dict] = {}
    for candidate in candidates:
        art_id = _probe_id(base, candidate, threads)
        artifact, _ = store.verified(PROBE_KIND, art_id) if store.exists(PROBE_KIND, art_id) else (None, [])
        if artifact is None:  # absent, or failing its seal: measured again (the commit quarantines a bad one)
            tmp = store.new_tmp_dir(PROBE_KIND, art_id)
            artifact = store.commit(tmp, kind=PROBE_KIND, art_id=art_id,
                                    record={"metrics": time_untrained(base, candidate, threads),
                                            "config": {"model": candidate.model}})
            cached = ""
        else:
            cached = "  (cached)"
        figures = artifact.metrics
        p90 = figures["p90_ms"]
        fastest = min(p90.values(), default=None)
        dropped = not figures["unprobed"] and fastest is not None and fastest > limit
        found[candidate.name] = {**figures, "fastest_ms": fastest, "dropped": dropped}
        echo(f"probe {candidate.name:<16} untrained p90 at batch {search.budget.latency.batch}: "
             + ", ".join(f"{t} {ms:.3g} ms" for t, ms in p90.items())
             + ("  -> dropped before training" if dropped else "") + cached)
    return found


def time_untrained(base: Manifest, candidate: Candidate, threads: int) -> dict:
    """Export the candidate's untrained network to every probed target and time each at the budget's
    batch: ``{"p90_ms": {target: ms}, "unprobed": [targets]}``."""
    import numpy as np
    import torch

    from cskd.models import Preprocessed, create_model
    from exports.latency import measure_interleaved
    from exports.onnx_export import export_onnx
    from foundation.backends import backend

    export, batch = base.export, base.search.budget.latency.batch
    ds = base.data.source().load()
    shape = (ds.in_channels, *ds.image_size)
    torch.set_num_threads(threads)
    calibration = np.random.default_rng(0).random((PROBE_CALIBRATION_IMAGES, *shape), dtype=np.float32)
    images = np.zeros((batch, *shape), dtype=np.uint8)
    try:
        net = create_model(candidate.model, num_classes=ds.num_classes, in_channels=ds.in_channels)
    except ValueError as exc:
        raise ManifestError(f"search.candidates: {candidate.name}: {exc}") from None
    model = Preprocessed(net, mean=list(ds.mean), std=list(ds.std)).eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as exc:  # timm asserts its input size
        raise ManifestError(f"search.candidates: {candidate.name} does not take the data's {ds.name} images "
                            f"({'x'.join(map(str, shape))}): {str(exc).splitlines()[0]}; choose a model for "
                            f"this input size or set data.image_size") from None
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_onnx(model, sample=torch.zeros(2, *shape), path=Path(scratch) / "untrained.onnx",
                                opset=export.opset)
        files, runners, unprobed = {"onnx": onnx_path}, {}, []
        pending = list(export.targets)
        while pending:  # a target after the targets it is built from
            ready = [t for t in pending if all(s in files for s in backend(t).requires(export))]
            for target in ready or pending:
                pending.remove(target)
                spec = backend(target)
                if spec.probe is None or not ready or spec.device != "cpu":
                    unprobed.append(target)
                    continue
                folder = Path(scratch) / spec.kind
                folder.mkdir(exist_ok=True)
                spec.probe(files, folder / spec.file, export, calibration)
                files[target] = folder / spec.file
                runners[target] = spec.runner({spec.kind: _Folder(folder)}, batch_size=batch, threads=threads)
        timed = measure_interleaved({t: (lambda r=run: r(images)) for t, run in runners.items()}, batch=batch,
                                    warmup=10, runs=100)
    return {"p90_ms": {t: round(cell["p90_ms"], 4) for t, cell in timed.items()}, "unprobed": unprobed}
