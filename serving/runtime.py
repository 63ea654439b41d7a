"""Serving a shipped bundle: one model runner and one protocol codec (codec.py), shared by every
engine.

The runner loads one exported file of a bundle (ONNX Runtime for the ONNX files, OpenVINO for
the IR) and maps a float32 batch to logits. The codec speaks the Open Inference Protocol v2
(KServe v2, what Triton, KServe and MLServer speak: JSON tensors in, JSON tensors out) and
``/v1/classify`` (image bytes in, label and probabilities out, decoded by the pipeline's own
decoder, ``cskd.data.decode``: the server runs no code the bundle carries). Every answer names
the version served. An engine (``engines.py``) only adapts these to its server and its dynamic
batching, so engines cannot drift apart.

A bad request raises ``BadRequest`` with a message; engines answer it with HTTP 400. Bodies are
parsed strictly: NaN, infinities (``1e400``) and JSON nested past the parser's recursion limit
are bad requests, and so is a non-finite value in a tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_VERSION_FOLDER = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Bundle:
    """A shipped bundle folder: its model card and, for each target, its files."""

    folder: Path
    card: dict
    version: str  # what OIP answers name: N of a folder vN, else the first 12 hex of its SHA256SUMS

    @classmethod
    def open(cls, folder: Path) -> Bundle:
        card_path = folder / "model_card.json"
        if not card_path.is_file():
            raise FileNotFoundError(
                f"{folder}: not a bundle (no model_card.json); give a shipped version folder "
                f"such as shipped/<name>/latest"
            )
        match = _VERSION_FOLDER.match(Path(folder).resolve().name)
        sums = Path(folder) / "SHA256SUMS"
        version = (
            match.group(1)
            if match
            else (
                hashlib.sha256(sums.read_bytes()).hexdigest()[:12] if sums.is_file() else "unsealed"
            )
        )
        return cls(folder, json.loads(card_path.read_text()), version)

    @property
    def name(self) -> str:
        return self.card["name"]

    def fastest_target(self) -> str:
        """The report's fastest file within its accuracy budget at its largest batch size, else
        onnx."""
        report = self.folder / "report.json"
        fastest = (json.loads(report.read_text()).get("fastest") or {}) if report.is_file() else {}
        return fastest[max(fastest, key=int)]["backend"] if fastest else "onnx"


def note_replica() -> None:
    """Test hook: with CSKD_SERVE_REPLICA_PIDS set to a folder, a replica leaves its process id
    there when it is set up (the replica-kill tests find the process to kill this way)."""
    folder = os.environ.get("CSKD_SERVE_REPLICA_PIDS")
    if folder:
        (Path(folder) / str(os.getpid())).touch()


class Runner:
    """One exported file of the bundle: ``__call__(float32 [N, C, H, W]) -> float32 logits [N,
    K]``."""

    def __init__(self, bundle: Bundle, files: list[str], *, threads: int | None = None):
        model = next(bundle.folder / f for f in files if f.endswith((".onnx", ".xml")))
        if model.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            # idle compute threads sleep instead of spinning: a server shares its cores with the
            # HTTP
            # side (and here with the load generator), which spinning threads would starve
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})[0]
        else:
            import openvino as ov

            config = {
                "INFERENCE_PRECISION_HINT": "f32",
                **({"INFERENCE_NUM_THREADS": threads} if threads else {}),
            }
            compiled = ov.Core().compile_model(str(model), "CPU", config)
            self._run = lambda x: compiled(x)[compiled.output(0)]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(
            self._run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32
        )
