"""The stage contract and the stage registry.

A stage is a class with a ``kind`` (its name in the graph), an integer
``version`` (bump it when its semantics change: that changes every id it
produces) and a frozen pydantic ``Config`` holding exactly what it reads. It
registers itself when the class is defined. The orchestrator asks each
registered stage to ``configure`` itself from the manifest (None: not asked
for), then calls ``run(config, ctx)``: the stage never sees the manifest, so
everything it can read is in its config, and its config is in its id.
The runner, not the stage, does hashing, caching, temporary folders, the
atomic commit and sealing.
"""

from __future__ import annotations

import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from foundation.artifact import Artifact

if TYPE_CHECKING:
    from foundation.manifest import Manifest

NOT_IN_ID = "not_in_id"
OMIT_IF_NONE = "omit_if_none"


def Added(**kwargs: Any) -> Any:  # noqa: N802 - used like pydantic's Field
    """A config field added after artifacts were made without it: while it is None it stays
    out of the id, so adding it does not invalidate every artifact in every store."""
    return Field(None, json_schema_extra={OMIT_IF_NONE: True}, **kwargs)


def Located(default: Any = ..., **kwargs: Any) -> Any:  # noqa: N802 - used like pydantic's Field
    """A config field that says *where* to find something whose identity is covered by another
    field (a file given with its sha256, a data folder that may be downloaded). It reaches the
    stage but not the artifact id, so moving a file does not rerun the graph."""
    return Field(default, json_schema_extra={NOT_IN_ID: True}, **kwargs)


def _exclusions(model: BaseModel) -> dict:
    out: dict = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        value = getattr(model, name)
        if isinstance(extra, dict) and (
            extra.get(NOT_IN_ID) or (extra.get(OMIT_IF_NONE) and value is None)
        ):
            out[name] = True
            continue
        if isinstance(value, BaseModel) and (inner := _exclusions(value)):
            out[name] = inner
    return out


def recipe(config: BaseModel) -> dict:
    """The JSON data of ``config`` that defines the result: every field but ``Located`` ones."""
    return config.model_dump(mode="json", by_alias=True, exclude=_exclusions(config) or None)


class Inputs(Mapping):
    """A stage's inputs by kind: the artifacts made before it, and on-demand ones made at their
    first read (``Stage.on_demand``)."""

    def __init__(
        self, kinds: dict[str, str], made: dict[str, Artifact], demand: Callable[[str], Artifact]
    ):
        self._kinds, self._made, self._demand = kinds, made, demand

    def __getitem__(self, kind: str) -> Artifact:
        if kind not in self._kinds:
            raise KeyError(kind)
        return self._made[kind] if kind in self._made else self._demand(kind)

    def __iter__(self):
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


@dataclass
class StageContext:
    out_dir: Path  # write outputs here (a temporary folder the runner commits)
    work_dir: Path  # resumable scratch that survives a killed run
    cache_dir: Path  # shared caches kept across artifacts (e.g. TensorRT timing cache)
    # verified input artifacts by kind (an on-demand one is made when read)
    inputs: Mapping[str, Artifact]
    # False, or the run's rich Progress display (a stage may add bars to it)
    progress: object = False
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    metrics: dict
    headline: str = ""  # the main metric, for the one-line summary
    extra: dict = field(default_factory=dict)  # other record entries (e.g. the input contract)


class Stage(ABC):
    """Subclass with ``kind``, ``version``, ``Config``, ``configure`` and ``run`` to add a stage."""

    kind: ClassVar[str]
    version: ClassVar[int]
    Config: ClassVar[type[BaseModel]]
    requires: ClassVar[tuple[str, ...]] = ()  # input kinds, unless ``inputs`` says otherwise
    # The model of what ``run`` records under metrics (foundation/records.py), when a layer
    # above the stages reads it; the runner checks each new record against it.
    Record: ClassVar[type[BaseModel] | None] = None
    # Runs on every node of a multi-node run (training); other stages run on node 0 only.
    every_node: ClassVar[bool] = False
    registry: ClassVar[dict[str, type[Stage]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:  # an intermediate base, not a stage
            return
        if cls.kind in Stage.registry and Stage.registry[cls.kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"stage kind {cls.kind!r} is registered twice")
        Stage.registry[cls.kind] = cls

    @classmethod
    @abstractmethod
    def configure(cls, manifest: Manifest) -> BaseModel | None:
        """This stage's config from the manifest, or None when the manifest does not ask for it."""

    def inputs(self, config: BaseModel) -> tuple[str, ...]:
        """The kinds this stage reads; by default ``requires``."""
        return self.requires

    def on_demand(self, config: BaseModel) -> bool:
        """Whether this stage runs only when a reader asks for it, by reading ``ctx.inputs[kind]``
        (QAD: only when post-training INT8 misses its budget). It is planned, and has its id, as
        any stage; the runner computes it, or takes it from the store, at the first read."""
        return False

    def redundant(self, config: BaseModel, ids: dict[str, str]) -> bool:
        """Given every planned id, whether this stage's result cannot matter (the champion is the
        very
        model this plan ships). The planner then plans again with the kind in ``left_out_kinds()``,
        which ``configure`` of this stage and of its readers consult."""
        return False

    def preflight(self, config: BaseModel) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise before any compute if something this stage needs is missing (a back-end,
        hardware)."""

    @abstractmethod
    def run(self, config: BaseModel, ctx: StageContext) -> StageResult:
        """Compute the outputs into ``ctx.out_dir``."""


_LEFT_OUT: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "left_out_kinds", default=frozenset()
)


def left_out_kinds() -> frozenset[str]:
    """Stage kinds the planner is planning without (see ``Stage.redundant``)."""
    return _LEFT_OUT.get()


@contextlib.contextmanager
def planning_without(kinds: frozenset[str]):
    token = _LEFT_OUT.set(kinds)
    try:
        yield
    finally:
        _LEFT_OUT.reset(token)


def registered_stages() -> dict[str, type[Stage]]:
    return dict(Stage.registry)
