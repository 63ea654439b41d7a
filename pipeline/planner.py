"""Plan a manifest's stage graph from the stage registry: ``plan`` asks every registered stage
for its config (the stages it does not need say None), orders them by their declared inputs,
and chains the ids. No compute, nothing written; ``check_inputs`` checks the files the manifest
names. This module imports no concrete stage."""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from pydantic import BaseModel

import stages  # noqa: F401 - registers every stage and back-end
from cskd.data.fingerprint import forget as forget_fingerprints
from foundation.artifact import artifact_id
from foundation.contracts import Stage, planning_without, recipe, registered_stages
from foundation.errors import ManifestError
from foundation.manifest import Manifest


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    config: BaseModel
    id: str
    inputs: dict[str, str]  # input kind -> artifact id

    @property
    def kind(self) -> str:
        return self.stage.kind


def check_inputs(manifest: Manifest) -> None:
    """Every file and folder the manifest names as input exists: the data (with the fix that
    applies to its source) and the weights files. ``ManifestError`` (exit 2) names the first
    one missing; nothing has been written yet."""
    manifest.data.check_paths()
    files = {"teacher.checkpoint.path": manifest.teacher.checkpoint, "teacher.init.path": manifest.teacher.init,
             "student.init.path": manifest.student.init}
    for name, ref in files.items():
        if ref is not None and not Path(ref.path).is_file():
            raise ManifestError(f"{name}: {ref.path} not found; give the weights file (a path relative to the "
                                f"working directory, or absolute)")


def plan(manifest: Manifest, *, until: str | None = None) -> list[PlannedStage]:
    """The stages the manifest asks for, in dependency order, with their ids.

    With ``until``, only that stage and the stages it depends on.
    """
    check_inputs(manifest)
    forget_fingerprints()  # read the data folders as they are now, once for this plan
    manifest = manifest.model_copy(update={"data": manifest.data.decided()})  # in memory or streamed, once
    steps = _plan(manifest, until)
    ids = {s.kind: s.id for s in steps}
    redundant = frozenset(s.kind for s in steps if s.stage.redundant(s.config, ids))
    if redundant:  # e.g. the champion is the model this plan ships: plan as if it were not there
        with planning_without(redundant):
            steps = _plan(manifest, until)
    return steps


def on_demand(steps: list[PlannedStage]) -> set[str]:
    """The kinds made only when a planned reader asks for them (``Stage.on_demand``); one that
    nothing planned reads (``run --until`` it) runs in its place in the order."""
    read = {kind for step in steps for kind in step.inputs}
    return {step.kind for step in steps if step.kind in read and step.stage.on_demand(step.config)}


def _plan(manifest: Manifest, until: str | None) -> list[PlannedStage]:
    chosen: dict[str, tuple[Stage, BaseModel]] = {}
    for kind, cls in registered_stages().items():
        config = cls.configure(manifest)
        if config is not None:
            chosen[kind] = (cls(), config)
    needs = {kind: stage.inputs(config) for kind, (stage, config) in chosen.items()}
    for kind, inputs in needs.items():
        missing = [k for k in inputs if k not in chosen]
        if missing:
            raise RuntimeError(f"stage {kind!r} reads {missing} but the manifest enables no such stage")
    try:
        order = list(TopologicalSorter(needs).static_order())
    except CycleError as exc:
        raise RuntimeError(f"the stages' inputs form a cycle: {exc.args[1]}") from None
    if until is not None:
        keep, todo = set(), [until]
        while todo:
            kind = todo.pop()
            if kind not in keep:
                keep.add(kind)
                todo.extend(needs[kind])
        order = [k for k in order if k in keep]
    ids: dict[str, str] = {}
    planned = []
    for kind in order:
        stage, config = chosen[kind]
        inputs = {k: ids[k] for k in needs[kind]}
        ids[kind] = artifact_id(kind, stage.version, recipe(config), inputs)
        planned.append(PlannedStage(stage, config, ids[kind], inputs))
    return planned
