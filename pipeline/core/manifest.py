"""The manifest schema (pydantic v2, unknown keys forbidden everywhere).

One YAML file describes the whole run: data, teacher, student and its
distillation loss, export, validation, the gate and where to ship. Stages never
see this object: each projects the part it reads into its own config (its
``configure``), and that config is what its artifact id is made of. The data
section offers the three projections stages declare: ``source`` (which data
set), ``train_view`` (the train/val split) and ``test_view`` (the test split).
``pipeline.manifest_io.load_manifest`` reads and validates a file before any compute.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from cskd.config import Strict, TrainConfig
from cskd.loss_configs import CSKDLoss
from cskd.loss_registry import LossConfig, parse_loss
from pipeline.core.backends import FASTEST, auto_targets, backends, export_settings_model
from pipeline.core.contracts import Added, Located
from pipeline.core.data_section import DataSection, DataSource, TestData, TrainData  # noqa: F401 - re-exported views

# Folders of the project itself: no output location may be one of them or inside one.
PROJECT_FOLDERS = (".git", ".venv", "pipeline", "stages", "cskd", "exports", "tests", "manifests", "baselines",
                   "benchmarks")


def _relative_inside(value: str) -> str:
    """Output paths stay inside the working directory: relative, no '..', no drive."""
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        raise ValueError(f"{value!r} is absolute; use a path relative to the working directory")
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        raise ValueError(f"{value!r} escapes the working directory; remove the '..'")
    return value


def _known_model(name: str) -> str:
    from cskd.models import list_models
    from cskd.models.sources import check_external, is_external

    if is_external(name):
        check_external(name)
        return name
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}, or torchvision:<name>, "
                         f"timm:<name>")
    return name


RelativePath = Annotated[str, Field(max_length=4096), AfterValidator(_relative_inside)]
ModelName = Annotated[str, Field(max_length=128, description="a registry name, torchvision:<name> or timm:<name>"),
                      AfterValidator(_known_model)]
Points = Annotated[float, Field(ge=0, le=100)]


def _known_target(name: str) -> str:
    if name not in backends():
        raise ValueError(f"unknown export target {name!r}; known: {', '.join(backends())}")
    return name


Target = Annotated[str, AfterValidator(_known_target)]
LossField = Annotated[SerializeAsAny[LossConfig], BeforeValidator(parse_loss)]


class CheckpointRef(Strict):
    # The file's content (its sha256), not where it lies, defines the teacher.
    path: str = Located(max_length=4096, description="a weights file (this project's safetensors, or with "
                                                     "format: a torchvision/timm state dict)")
    sha256: Annotated[str, AfterValidator(str.lower)] | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of the file, 64 hex digits: checked when given, "
                                                         "computed from the file when not (it is the id)")
    format: Literal["auto", "torchvision", "timm", "safetensors"] | None = Added(
        description="unset: this project's own safetensors; torchvision/timm: their state dict files")


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower)]


class WeightsInit(Strict):
    """Weights a model starts training from (a pretrained network, often fine-tuned elsewhere)."""

    path: str = Field(max_length=4096, description="a torchvision or timm state dict file, or safetensors")
    sha256: Sha256 | None = Field(None, description="checked when given; computed when not (it is part of the id)")
    format: Literal["auto", "torchvision", "timm", "safetensors"] = "auto"


class Normalization(Strict):
    mean: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1, max_length=4)
    std: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        return self


def _parse_preprocess(value: object) -> object:
    """One error line however it is wrong: a preset name, or {mean, std}."""
    if isinstance(value, str):
        if value not in ("imagenet", "dataset"):
            raise ValueError(f"unknown preset {value!r}; use imagenet, dataset or {{mean: [...], std: [...]}}")
        return value
    if isinstance(value, dict):
        try:
            return Normalization.model_validate(value)
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
    return value


Preprocess = Annotated[str | Normalization, BeforeValidator(_parse_preprocess)]


class _ModelSection(Strict):
    model: ModelName
    init: WeightsInit | None = Field(None, description="start training from these weights")
    preprocess: Preprocess | None = Field(
        None, description="input normalisation inside the network: imagenet, dataset or {mean, std}; "
                          "unset: imagenet for torchvision:/timm: models, dataset for registry models")


class TeacherSection(_ModelSection):
    train: TrainConfig | None = None
    checkpoint: CheckpointRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.train is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'train' (train the teacher) or 'checkpoint' (load it)")
        if self.checkpoint is not None and self.init is not None:
            raise ValueError("'init' starts training from weights; a 'checkpoint' teacher is not trained: give one")
        return self


class StudentSection(_ModelSection):
    loss: LossField = Field(CSKDLoss(kind="cskd"), description="a registered loss: {kind: ..., settings}")
    train: TrainConfig


class ExportSection(Strict):
    """``targets``, and the keys the back-ends and stages own (``int8``, ``trt``, ``opset``, ...):
    each is validated by the type its owner registered (``register_export_setting``), the way
    ``student.loss`` dispatches to the registered loss, so adding a back-end edits no schema here."""

    model_config = ConfigDict(extra="allow", frozen=True)  # the owners' keys, validated below

    targets: list[Target] | Literal["auto"] = Field(
        default_factory=lambda: ["onnx"],
        description="export targets, or auto: every target whose runtime is installed and whose device is here")

    # targets: auto resolves on validation; what it left out and why (`left_out_targets`)
    _left_out: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _owned_settings(cls, data: object) -> object:
        """Every key but ``targets`` through its owner's type, defaults filled in; unknown keys
        are refused with their location (``export.<key>``), as everywhere else."""
        if not isinstance(data, dict):
            return data
        rest = {k: v for k, v in data.items() if k != "targets"}
        settings = export_settings_model().model_validate(rest)
        return {**{k: v for k, v in data.items() if k == "targets"}, **dict(settings)}

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
                raise ValueError(f"target {target!r} is built from {', '.join(missing)}: add it to targets")
            if problem := backends()[target].check(self):
                raise ValueError(problem)
        return self


class ValidateSection(Strict):
    batch_size: int = Field(256, ge=1, le=65_536)
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="paired bootstrap of student - teacher")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    paper_protocol: bool | None = Added(
        description="true: also record the best test top-1 over the student's epochs, as the KD papers' tables "
                    "report it: selected on the test set, labelled so everywhere, never read by the gate")


def _measured_backend(name: str) -> str:
    return name if name in ("pytorch-eager", FASTEST) else _known_target(name)


class LatencyRule(Strict):
    backend: Annotated[str, AfterValidator(_measured_backend)] = Field(
        FASTEST, description="the artifact whose p90 is judged: 'fastest' (the quickest student artifact whose "
                             "accuracy rules passed, as the report names it), pytorch-eager or an export target")
    batch: int = Field(1, ge=1, le=65_536)
    max_p90_ms: float = Field(gt=0, le=1e6)


class ServingRule(Strict):
    concurrency: int | None = Field(None, ge=1, le=10_000, description="the load level judged (default: the "
                                                                        "largest in latency.serving.concurrency)")
    p99_ms: float | None = Field(None, gt=0, le=1e6, description="served p99 latency budget (ms) at that load")
    min_throughput: float | None = Field(None, gt=0, le=1e9, description="served requests per second at least")

    @model_validator(mode="after")
    def _something(self) -> ServingRule:
        if self.p99_ms is None and self.min_throughput is None:
            raise ValueError("give p99_ms, min_throughput or both")
        return self


class GateSection(Strict):
    max_drop: float = Field(ge=0, le=100, description="student top-1 >= teacher top-1 - max_drop (points)")
    min_onnx_agreement: float = Field(99.9, ge=0, le=100,
                                      description="percent of test samples where ONNX and PyTorch agree on top-1")
    max_class_drop: float | None = Field(None, ge=0, le=100,
                                         description="no class may lose more top-1 points against the teacher")
    require_ci: bool = Field(False, description="the bootstrap CI's lower bound of student - teacher must clear -max_drop")
    min_teacher_top1: Points | None = Field(
        None, description="the teacher must reach this test top-1 (default: 1.5 times chance), or it did not learn")
    min_student_top1: Points | None = Field(None, description="the student must reach this test top-1 (default: off)")
    latency: LatencyRule | None = Field(None, description="p90 latency budget; needs the latency section")
    serving: ServingRule | None = Added(description="served p99 and throughput budgets; needs latency.serving")
    max_regression: Points = Field(
        0.0, description="top-1 points the new student's ONNX model may lose against the champion (the model "
                         "shipped/<name>/latest points at) on the same test images; ship.promote: always drops "
                         "this rule")


class ServingSection(Strict):
    concurrency: list[int] = Field(default_factory=lambda: [1, 32], min_length=1, max_length=8,
                                   description="simulated clients of each load test, one image per request")
    duration_s: float = Field(20.0, ge=1, le=3600, description="seconds measured at each load level")
    replicas: int = Field(1, ge=1, le=64, description="inference workers (LitServe) or replicas (Ray Serve)")
    engine: Literal["litserve", "ray"] = "litserve"
    target: str = Field(FASTEST, description="the export served: 'fastest' (the quickest file within its accuracy "
                                             "budget at the largest latency batch, as the report names it) or a "
                                             "target of export.targets")
    max_batch: int = Field(64, ge=1, le=4096, description="the largest batch dynamic batching forms (1: off)")
    batch_wait_ms: float = Field(2.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _levels(self) -> ServingSection:
        if any(c < 1 or c > 10_000 for c in self.concurrency):
            raise ValueError("concurrency levels must be between 1 and 10000")
        return self


class LatencySection(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1, max_length=8)
    runs: int = Field(100, ge=100, le=100_000, description="timed runs per back-end and batch size")
    warmup: int = Field(10, ge=0, le=10_000)
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (default: torch's)")
    serving: ServingSection | None = Added(description="serve the student over HTTP and load-test it "
                                                       "(`cskd-pipeline serve` and `loadtest`)")

    @model_validator(mode="after")
    def _sizes(self) -> LatencySection:
        if any(b < 1 or b > 65_536 for b in self.batch_sizes):
            raise ValueError("batch sizes must be between 1 and 65536")
        return self


class ShipSection(Strict):
    dir: RelativePath = Field("shipped", description="the model ships into <dir>/<manifest name>/")
    promote: Literal["if_not_worse", "always"] = Field(
        "if_not_worse", description="if_not_worse: a new version ships (and becomes latest) only when it is not "
                                    "worse than the champion (gate.max_regression); always: every passing run")


class DistributedSection(Strict):
    nproc: int = Field(1, ge=1, le=64, description="processes per node for the training stages (DDP; NCCL on GPUs, "
                                                   "gloo on CPUs)")
    nnodes: int = Field(1, ge=1, le=4096, description="machines that train together (one launcher each)")
    node_rank: int = Field(0, ge=0, description="this machine's number, 0 to nnodes-1; node 0 hosts the rendezvous "
                                               "and alone commits, exports, validates and ships")
    rdzv_endpoint: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$",
                                      description="HOST:PORT of node 0 for torch's c10d rendezvous (nnodes > 1)")

    @model_validator(mode="after")
    def _nodes(self) -> DistributedSection:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("nnodes > 1 needs rdzv_endpoint: node 0's HOST:PORT, the same on every node")
        return self


class ReportSection(Strict):
    dir: RelativePath = Field("reports", description="report.json and report.html go to <dir>/<manifest name>/")


class MlflowSection(Strict):
    uri: str | None = Field(None, max_length=4096, description="tracking URI (default: $MLFLOW_TRACKING_URI)")
    experiment: str | None = Field(None, max_length=256, description="experiment name (default: the manifest name)")


class TrackingSection(Strict):
    mlflow: MlflowSection | None = Field(None, description="log runs to MLflow (the [mlflow] extra)")


class Manifest(Strict):
    version: Literal[1] = Field(1, description="the manifest format")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="letters, digits, _ . -; names the report and ship folders")
    store: RelativePath = Field(".cskd", description="artifact store, relative to the working directory")
    data: DataSection = Field(description="the data set: where it is and how it is split")
    teacher: TeacherSection = Field(description="the teacher: trained here, or a checkpoint used as it is")
    student: StudentSection = Field(description="the student, its distillation loss and its training")
    export: ExportSection = Field(default_factory=ExportSection, description="the exported files and their budgets")
    validate_: ValidateSection = Field(ValidateSection(), alias="validate", description="test-split validation")
    latency: LatencySection | None = Field(None, description="measure latency of every exported model")
    gate: GateSection = Field(description="the rules a student must pass to ship")
    ship: ShipSection = Field(ShipSection(), description="where bundles go, and when a new one becomes latest")
    report: ReportSection = Field(ReportSection(), description="where run reports go")
    distributed: DistributedSection = Field(DistributedSection(), description="several processes or machines")
    tracking: TrackingSection = Field(TrackingSection(), description="MLflow tracking (optional)")
    # the -o/--set overrides this manifest was loaded with, as typed (the run history shows them)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _outputs_apart(self) -> Manifest:
        """The store and the report and ship folders (``<dir>/<name>``) may not hold one another,
        be the working directory, or lie in the project's own folders."""
        places = {"store": self.store, "report.dir": f"{self.report.dir}/{self.name}",
                  "ship.dir": f"{self.ship.dir}/{self.name}"}
        parts = {f: tuple(p for p in PurePosixPath(v.replace("\\", "/")).parts if p != ".") for f, v in places.items()}
        for field, own in parts.items():
            if not own or own[0] in PROJECT_FOLDERS:
                raise ValueError(f"{field}: {places[field]!r} is the working directory or in a project folder; "
                                 f"use a folder of its own, e.g. the default")
        fields = list(parts)
        for i, a in enumerate(fields):
            for b in fields[i + 1:]:
                shorter = min(len(parts[a]), len(parts[b]))
                if parts[a][:shorter] == parts[b][:shorter]:
                    raise ValueError(f"{a} ({places[a]!r}) and {b} ({places[b]!r}) overlap; give each its own folder")
        return self

    @model_validator(mode="after")
    def _latency_rule_measurable(self) -> Manifest:
        rule = self.gate.latency
        if rule is not None:
            if self.latency is None:
                raise ValueError("gate.latency needs a 'latency' section that measures it")
            if rule.batch not in self.latency.batch_sizes:
                raise ValueError(f"gate.latency.batch {rule.batch} is not in latency.batch_sizes")
            if rule.backend not in ("pytorch-eager", FASTEST) and rule.backend not in self.export.targets:
                raise ValueError(f"gate.latency.backend {rule.backend!r} is not in export.targets")
        serving = self.latency.serving if self.latency else None
        if self.gate.serving is not None:
            if serving is None:
                raise ValueError("gate.serving needs a 'latency.serving' section that measures it")
            if self.gate.serving.concurrency not in (None, *serving.concurrency):
                raise ValueError(f"gate.serving.concurrency {self.gate.serving.concurrency} is not in "
                                 f"latency.serving.concurrency")
        if serving is not None and serving.target != FASTEST and serving.target not in self.export.targets:
            raise ValueError(f"latency.serving.target {serving.target!r} is not in export.targets")
        return self
