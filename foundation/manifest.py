"""The manifest schema (pydantic v2, unknown keys forbidden everywhere).

One YAML file describes the whole run. Stages never see this object: each projects the part
it reads into its own config (its ``configure``), and that config is what its artifact id is
made of. The sections live beside what reads them: ``run_sections`` (validate, ship, report,
distributed, tracking) and ``search_section`` here in the foundation; the sections that need
method code (``data``, ``teacher``, ``student``) in stagekit, and a stage's own section in its
module or stagekit (``gate`` in ``stagekit/gate_rules.py``), registered in ``SECTIONS``; a
back-end's ``export:`` keys in its stage module (``EXPORT_SETTINGS``). This module puts them
together. ``pipeline.manifest_io.load_manifest`` reads and validates a file before any compute.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from foundation.backends import auto_targets, backends
from foundation.fields import RelativePath, Strict, Target
from foundation.run_sections import (
    DistributedSection,
    ReportSection,
    ShipSection,
    TrackingSection,
    ValidateSection,
)
from foundation.search_section import SearchSection
from foundation.sections import EXPORT_SETTINGS, SECTIONS

# Folders of the project itself: no output location may be one of them or inside one.
PROJECT_FOLDERS = (
    ".git",
    ".venv",
    "pipeline",
    "foundation",
    "stages",
    "stagekit",
    "cskd",
    "exports",
    "tests",
    "manifests",
    "baselines",
    "benchmarks",
)


class ExportSection(Strict):
    """The exported files (``targets``) and each back-end's settings and budget."""

    # Every key but targets (int8, trt, opset, ...) is validated by the type its owner registered
    # (EXPORT_SETTINGS.register), as student.loss dispatches to the registered loss: adding a
    # back-end edits nothing here. extra="allow" holds the validated values.
    model_config = ConfigDict(extra="allow", frozen=True)
    plugin_keys: ClassVar = EXPORT_SETTINGS

    targets: list[Target] | Literal["auto"] = Field(
        default_factory=lambda: ["onnx"],
        description="export targets, or auto: every target whose runtime is installed and whose "
                    "device is here",
    )

    # targets: auto resolves on validation; what it left out and why (`left_out_targets`)
    _left_out: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _owned_settings(cls, data: object) -> object:  # unknown keys refused as export.<key>
        return EXPORT_SETTINGS.split(data, {"targets"}) if isinstance(data, dict) else data

    @property
    def left_out_targets(self) -> dict[str, str]:
        """With ``targets: auto``: each registered target it left out, and why."""
        return dict(self._left_out)

    def auto_line(self) -> str | None:
        """One line for the run's output: what ``targets: auto`` chose and left out, and why."""
        if not self._left_out:
            return None
        why = "; ".join(f"{t}: {reason}" for t, reason in self._left_out.items())
        return f"[targets ] auto: {', '.join(self.targets)}; left out {why}"

    @model_validator(mode="after")
    def _consistent(self) -> ExportSection:
        if self.targets == "auto":
            chosen, self._left_out = auto_targets(self)
            object.__setattr__(self, "targets", chosen)  # frozen: resolved once, here
        if not 1 <= len(self.targets) <= 16:
            raise ValueError("targets: give 1 to 16 targets, or auto")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must not repeat")
        if "onnx" not in self.targets:
            raise ValueError("targets must include 'onnx' (every other target is made from it)")
        for target in self.targets:
            missing = [t for t in backends()[target].requires(self) if t not in self.targets]
            if missing:
                raise ValueError(
                    f"target {target!r} is built from {', '.join(missing)}: add it to targets"
                )
            if problem := backends()[target].check(self):
                raise ValueError(problem)
        return self


class Manifest(Strict):
    """One run: the data, the teacher, the student and its loss, the exports, the gate, where to
    ship."""

    # The fixed sections below, and one per key a stage registered (gate, latency), validated by
    # its owner's type (SECTIONS.register) and held as extras: manifest.gate works as a field would.
    model_config = ConfigDict(extra="allow", frozen=True)
    plugin_keys: ClassVar = SECTIONS

    version: Literal[1] = Field(1, description="the manifest format")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="letters, digits, _ . -; names the report and ship folders",
    )
    store: RelativePath = Field(
        ".cskd", description="artifact store, relative to the working directory"
    )
    export: ExportSection = Field(
        default_factory=ExportSection, description="the exported files and their budgets"
    )
    validate_: ValidateSection = Field(
        ValidateSection(), alias="validate", description="test-split validation"
    )
    ship: ShipSection = Field(
        ShipSection(), description="where bundles go, and when a new one becomes latest"
    )
    report: ReportSection = Field(ReportSection(), description="where run reports go")
    distributed: DistributedSection = Field(
        DistributedSection(), description="several processes or machines"
    )
    tracking: TrackingSection = Field(TrackingSection(), description="MLflow tracking (optional)")
    search: SearchSection | None = Field(
        None,
        description="candidate students and a deployment budget for "
        "`cskd-pipeline search` (other commands ignore it)",
    )
    # the -o/--set overrides this manifest was loaded with, as typed (the run history shows them)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _stage_sections(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        fixed = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
        try:
            return SECTIONS.split(data, fixed)
        except ValidationError as exc:  # with the fixed sections' problems: every problem at once
            raise SECTIONS.with_errors_of(
                exc, cls, {k: v for k, v in data.items() if k in fixed}
            ) from None

    @model_validator(mode="after")
    def _outputs_apart(self) -> Manifest:
        """The store and the report and ship folders (``<dir>/<name>``) may not hold one another,
        be the working directory, or lie in the project's own folders."""
        places = {
            "store": self.store,
            "report.dir": f"{self.report.dir}/{self.name}",
            "ship.dir": f"{self.ship.dir}/{self.name}",
        }
        parts = {
            f: tuple(p for p in PurePosixPath(v.replace("\\", "/")).parts if p != ".")
            for f, v in places.items()
        }
        for field, own in parts.items():
            if not own or own[0] in PROJECT_FOLDERS:
                raise ValueError(
                    f"{field}: {places[field]!r} is the working directory or in a project folder; "
                    f"use a folder of its own, e.g. the default"
                )
        fields = list(parts)
        for i, a in enumerate(fields):
            for b in fields[i + 1 :]:
                shorter = min(len(parts[a]), len(parts[b]))
                if parts[a][:shorter] == parts[b][:shorter]:
                    raise ValueError(
                        f"{a} ({places[a]!r}) and {b} ({places[b]!r}) overlap; give each its own "
                        "folder"
                    )
        return self

    @model_validator(mode="after")
    def _sections_fit(self) -> Manifest:
        """Rules across sections, registered with their keys (gate.latency needs latency, ...)."""
        for check in SECTIONS.checks():
            if problem := check(self):
                raise ValueError(problem)
        return self
