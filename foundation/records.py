"""Typed stage records: what the layer above the stages reads from an artifact, as pydantic models.

A role model here (``ValidationRecord``, ``VerdictRecord``, ...) says what any stage in that role
records under ``metrics`` and which files it writes. The stage that plays the role declares its own
record next to its code, a subclass with every metric it writes, as ``Stage.Record``; the runner
checks each new record against it before the commit. The report, the study, tracking and the
orchestrator find a role's artifact through the stage registry (``find``, ``kind_of``), never by a
stage kind or a file name of their own.

Fields that artifacts made before a metric existed lack are optional, so old stores still read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from foundation.artifact import Artifact
from foundation.contracts import registered_stages
from foundation.errors import StoreError


class StageRecord(BaseModel):
    """A stage's ``metrics``: the declared fields typed, any other metric kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)


class TrainedRecord(StageRecord):
    WEIGHTS: ClassVar[str] = "model.safetensors"
    # one JSON row per epoch (absent for a loaded checkpoint)
    HISTORY: ClassVar[str] = "metrics.jsonl"

    parameters: int | None = None
    train_samples: int | None = None
    val_samples: int | None = None


class TeacherRecord(TrainedRecord):
    source: Literal["trained", "checkpoint"] | None = None


class StudentRecord(TrainedRecord):
    # validate.paper_protocol: the best test top-1 over the epochs
    paper_protocol: dict | None = None


class ValidationRecord(StageRecord):
    # logits of each model and the labels, test split
    PREDICTIONS: ClassVar[str] = "predictions.safetensors"

    samples: int
    num_classes: int
    split: str
    teacher_top1: float
    student_top1: float
    models: dict[str, dict]  # "teacher", "student" and each target: top1, per_class, ...
    student_vs_teacher: dict  # the paired bootstrap interval and McNemar's test


class ChampionRecord(StageRecord):
    # the champion's logits and the labels
    PREDICTIONS: ClassVar[str] = "champion_predictions.safetensors"

    comparable: bool
    version: str


class LatencyRecord(StageRecord):
    results: list[dict]  # one cell per back-end and batch size: p50_ms, p90_ms, throughput_ips, ...


class ServingRecord(StageRecord):
    in_process: dict  # batch -> the runtime's own figures without HTTP
    rows: list[dict]  # one per load level


class QuantizationRecord(StageRecord):
    val_drop: float | None = None
    operators: str | None = None


class VerdictRecord(StageRecord):
    passed: StrictBool  # true itself: a verdict never ships on "true", 1 or "yes"
    rules: list[dict]  # each: rule, passed, target (for a back-end's budget), measured, ...


class BundleRecord(StageRecord):
    CARD: ClassVar[str] = "model_card.json"

    files: list[str]
    bundle_key: str


R = TypeVar("R", bound=StageRecord)


@dataclass(frozen=True)
class Found(Generic[R]):
    """A role's artifact and its record, validated by the stage's own record model."""

    artifact: Artifact
    record: R

    @property
    def id(self) -> str:
        return self.artifact.id

    def file(self, name: str) -> Path:
        return self.artifact.file(name)


def kind_of(role: type[StageRecord]) -> str:
    """The registered stage kind whose record plays ``role``; exactly one must."""
    kinds = [kind for kind, stage in registered_stages().items()
             if stage.Record is not None and issubclass(stage.Record, role)]
    if len(kinds) != 1:
        raise LookupError(f"{len(kinds)} registered stages record a {role.__name__} ({kinds}); "
                          "exactly one must")
    return kinds[0]


class RecordMismatch(StoreError, ValueError):
    """A stored record that does not fit its stage's record model (exit 4, one line; still the
    ``ValueError`` a caller of ``find`` that reads untrusted records may catch)."""


def find(artifacts: Mapping[str, Artifact], role: type[R]) -> Found[R] | None:
    """The artifact playing ``role`` among ``artifacts`` (by stage kind), or None when that stage
    did not run in this plan."""
    kind = kind_of(role)
    if kind not in artifacts:
        return None
    artifact = artifacts[kind]
    record_type = registered_stages()[kind].Record
    try:
        return Found(artifact, record_type.model_validate(artifact.metrics))
    except ValidationError as exc:  # stored before its model changed: one line, and the fix
        short = str(getattr(artifact, "id", "?"))[:12]
        raise RecordMismatch(
            f"the stored {kind} artifact {short} does not fit "
            f"{record_type.__name__} ({_first_error(exc)}); recompute it with "
            f"`cskd-pipeline run --force {kind}`"
        ) from None


def need(artifacts: Mapping[str, Artifact], role: type[R]) -> Found[R]:
    """``find``, for a role every complete run has (validation, the verdict)."""
    found = find(artifacts, role)
    if found is None:
        raise LookupError(f"no {role.__name__} among this run's artifacts ({', '.join(artifacts)})")
    return found


def reread(store, artifacts: Mapping[str, Artifact], role: type[R]) -> Found[R]:
    """``need``, read again from ``store`` (an ``ArtifactStore``), which verifies it again: for a
    verdict or a bundle about to be acted on."""
    kind = kind_of(role)
    return need({kind: store.get(kind, artifacts[kind].id)}, role)


def metrics_of(artifacts: Mapping[str, Artifact], role: type[StageRecord]) -> dict | None:
    """The metrics of the artifact playing ``role``, as recorded; None when its stage did not
    run."""
    found = find(artifacts, role)
    return found.artifact.metrics if found is not None else None


def training_curves(artifact: Artifact | None) -> list[dict]:
    """The per-epoch rows a training artifact recorded (``TrainedRecord.HISTORY``); empty for any
    other."""
    path = artifact.file(TrainedRecord.HISTORY) if artifact is not None else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checked(kind: str, record_type: type[StageRecord] | None, metrics: dict[str, Any]) -> None:
    """Raise ``TypeError`` when a stage's new metrics do not fit the record it declares: a stage
    bug, caught before the commit rather than in a report or a release later."""
    if record_type is None:
        return
    try:
        record_type.model_validate(metrics)
    except ValidationError as exc:
        raise TypeError(
            f"the {kind} stage's metrics do not fit its {record_type.__name__}: {_first_error(exc)}"
        ) from None


def _first_error(exc: ValidationError) -> str:
    """``field.path: message`` of a validation error's first error: one line."""
    first = exc.errors()[0]
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
