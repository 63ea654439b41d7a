"""The stage graph a manifest plans: ids chained through each stage's inputs."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.contracts import Stage
from pipeline.manifest import Manifest
from pipeline.store import artifact_id
from stages.distill import DistillStage
from stages.export import ExportStage, Fp16Stage
from stages.gate import GateStage
from stages.latency import LatencyStage
from stages.quantize import QuantizeStage
from stages.teacher import TeacherStage
from stages.tensorrt import TensorRTStage
from stages.validate import ValidateStage

# In dependency order; each stage's inputs are earlier stages. Optional ones say
# through ``enabled`` whether the manifest asks for them.
STAGES: tuple[Stage, ...] = (TeacherStage(), DistillStage(), ExportStage(), Fp16Stage(), QuantizeStage(),
                             TensorRTStage(), ValidateStage(), LatencyStage(), GateStage())


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    id: str
    config: dict
    inputs: dict[str, str]  # input kind -> artifact id

    @property
    def kind(self) -> str:
        return self.stage.kind


def plan(manifest: Manifest) -> list[PlannedStage]:
    ids: dict[str, str] = {}
    planned = []
    for stage in STAGES:
        if not stage.enabled(manifest):
            continue
        inputs = {kind: ids[kind] for kind in stage.input_kinds(manifest)}
        config = stage.config(manifest)
        ids[stage.kind] = artifact_id(stage.kind, stage.version, config, inputs)
        planned.append(PlannedStage(stage, ids[stage.kind], config, inputs))
    return planned
