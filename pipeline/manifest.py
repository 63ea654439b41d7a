"""The manifest schema (pydantic v2, unknown keys forbidden everywhere).

One YAML file describes the whole run: data, teacher, student and its
distillation loss, export, validation, the gate and where to ship.
``pipeline.manifest_io.load_manifest`` reads and validates it before any compute.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from cskd.config import Strict, TrainConfig
from cskd.data.datasets import DATASETS


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

    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return name


RelativePath = Annotated[str, Field(max_length=4096), AfterValidator(_relative_inside)]
ModelName = Annotated[str, Field(max_length=128), AfterValidator(_known_model)]
Temperature = Annotated[float, Field(gt=0, le=1000)]
Weight = Annotated[float, Field(ge=0, le=1000)]


class DataSection(Strict):
    name: Literal[DATASETS]  # type: ignore[valid-type]
    root: str | None = Field(None, max_length=4096, description="folder holding the data set's files")
    download: bool = Field(False, description="let torchvision download missing files")
    val_fraction: float = Field(0.1, gt=0, le=0.5, description="held-out slice of the training split")
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    image_size: int | None = Field(None, ge=8, le=1024, description="imagefolder: resize to this square size")
    grayscale: bool = Field(False, description="imagefolder: read images as one channel")
    max_train_samples: int | None = Field(None, ge=16, description="use only the first N training samples")
    max_test_samples: int | None = Field(None, ge=16, description="validate on the first N test samples")

    @model_validator(mode="after")
    def _root_needed(self) -> DataSection:
        if self.name != "digits" and self.root is None:
            raise ValueError(f"data set {self.name!r} needs 'root': the folder that holds its files")
        return self


class CheckpointRef(Strict):
    path: str = Field(max_length=4096, description="a safetensors file")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of the file, 64 hex digits")


class TeacherSection(Strict):
    model: ModelName
    train: TrainConfig | None = None
    checkpoint: CheckpointRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.train is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'train' (train the teacher) or 'checkpoint' (load it)")
        return self


# ---- distillation losses: a discriminated union on `kind` ---------------------------------
class CELoss(Strict):
    kind: Literal["ce"]


class KDLoss(Strict):
    kind: Literal["kd"]
    temperature: Temperature = 4.0
    ce_weight: Weight = 0.1
    kd_weight: Weight = 0.9
    standardize: bool = Field(False, description="logit standardization before KD")


class DKDLoss(Strict):
    kind: Literal["dkd"]
    alpha: Weight = 1.0
    beta: Weight = 8.0
    temperature: Temperature = 4.0
    ce_weight: Weight = 1.0
    warmup_epochs: int = Field(20, ge=0, le=10_000)


class DISTLoss(Strict):
    kind: Literal["dist"]
    tau: Temperature = 4.0
    weight: Weight = 2.0
    ce_weight: Weight = 1.0


class CSKDLoss(Strict):
    kind: Literal["cskd"]
    preset: Literal["core", "paper"] = Field(
        "core", description="core: CE + CS(T) + CS(CSWT); paper: the authors' full objective")
    temperature: Temperature = 4.0
    alpha: Weight = 2.0
    cswt_low: Temperature = 2.0
    cswt_high: Temperature = 6.0
    ce_weight: Weight = 1.0
    kd_weight: Weight = 1.0

    @model_validator(mode="after")
    def _range(self) -> CSKDLoss:
        if self.cswt_low > self.cswt_high:
            raise ValueError("cswt_low must not exceed cswt_high")
        return self


LossConfig = Annotated[CELoss | KDLoss | DKDLoss | DISTLoss | CSKDLoss, Field(discriminator="kind")]


class StudentSection(Strict):
    model: ModelName
    loss: LossConfig = CSKDLoss(kind="cskd")
    train: TrainConfig


class ExportSection(Strict):
    opset: int = Field(18, ge=17, le=23, description="ONNX opset (the torch.export-based exporter writes 18 natively)")
    targets: list[Literal["onnx"]] = Field(default_factory=lambda: ["onnx"], min_length=1, max_length=8)


class ValidateSection(Strict):
    batch_size: int = Field(256, ge=1, le=65_536)


class GateSection(Strict):
    max_drop: float = Field(ge=0, le=100, description="student top-1 >= teacher top-1 - max_drop (points)")
    min_onnx_agreement: float = Field(99.9, ge=0, le=100,
                                      description="percent of test samples where ONNX and PyTorch agree on top-1")


class ShipSection(Strict):
    dir: RelativePath = Field("shipped", description="the model ships into <dir>/<manifest name>/")


class Manifest(Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    store: RelativePath = Field(".cskd", description="artifact store, relative to the working directory")
    data: DataSection
    teacher: TeacherSection
    student: StudentSection
    export: ExportSection = ExportSection()
    validate_: ValidateSection = Field(ValidateSection(), alias="validate")
    gate: GateSection
    ship: ShipSection = ShipSection()
