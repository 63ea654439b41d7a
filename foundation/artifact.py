"""What a stage made, as the layers above the store hold it (``Artifact``: its kind, id, folder and
record), and how its id is made: the sha256 of its recipe chained on its inputs' ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from foundation.files import canonical_json


def artifact_id(kind: str, version: int, config: dict, inputs: dict[str, str]) -> str:
    """sha256 (64 hex) of the stage's recipe chained on its inputs' ids."""
    recipe = {"kind": kind, "version": version, "config": config, "inputs": inputs}
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    kind: str
    id: str
    path: Path
    record: dict

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics", {})

    def file(self, name: str) -> Path:
        return self.path / name
