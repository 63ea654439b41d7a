"""The teacher and student sections: which network, from which weights, normalised how, and
(for the student) distilled with which registered loss."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from cskd.config import Strict, TrainConfig
from cskd.loss_configs import CSKDLoss
from cskd.loss_registry import LossConfig, parse_loss
from foundation import plugins
from foundation.contracts import Added, Located
from foundation.sections import SECTIONS


def known_model(name: str) -> str:
    """``name`` when it is buildable (built in, external, or added by an installed plug-in, which is
    loaded now); otherwise ``ValueError`` with the names known."""
    from cskd.models import list_models
    from cskd.models.sources import check_external, is_external

    if is_external(name):
        check_external(name)
        return name
    if name not in list_models() and not _plugin_model(name):
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}, or "
                         f"torchvision:<name>, timm:<name>, or a model an installed plug-in adds "
                         f"(`cskd-pipeline plugins`)")
    return name


def _plugin_model(name: str) -> bool:
    """Whether an installed plug-in adds model ``name`` (loaded now, and registered when its entry
    point is the factory itself rather than a module that registers it)."""
    from cskd.models import list_models, register_model

    factory = plugins.load("models", name)
    if factory is None:
        return False
    if name not in list_models():
        if not callable(factory):
            why = f"registered no model named {name!r} and is not a factory"
            raise plugins.failed("models", name, why)
        register_model(_named(factory, name))
    return True


def _named(factory, name: str):
    def build(**kwargs):
        return factory(**kwargs)
    build.__name__ = name  # the registry keys a factory by its name (timm's way)
    return build


def loss_config(value: object) -> LossConfig:
    """``parse_loss``, after loading the plug-in of a loss kind that is not built in."""
    from cskd.loss_base import registered_losses

    kind = value.get("kind") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in registered_losses():
        if plugins.load("losses", kind) is not None and kind not in registered_losses():
            raise plugins.failed("losses", kind, f"registered no loss of kind {kind!r}")
    return parse_loss(value)


ModelName = Annotated[
    str,
    Field(max_length=128, description="a registry name, torchvision:<name> or timm:<name>"),
    AfterValidator(known_model),
]
LossField = Annotated[SerializeAsAny[LossConfig], BeforeValidator(loss_config)]


class CheckpointRef(Strict):
    # The file's content (its sha256), not where it lies, defines the teacher.
    path: str = Located(
        max_length=4096,
        description="a weights file (this project's safetensors, or with "
        "format: a torchvision/timm state dict)",
    )
    sha256: Annotated[str, AfterValidator(str.lower)] | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="sha256 of the file, 64 hex digits: checked when given, "
        "computed from the file when not (it is the id)",
    )
    format: Literal["auto", "torchvision", "timm", "safetensors"] | None = Added(
        description="unset: this project's own safetensors; torchvision/timm: their state dict "
                    "files"
    )


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower)]


class WeightsInit(Strict):
    """Weights a model starts training from (a pretrained network, often fine-tuned elsewhere)."""

    path: str = Field(
        max_length=4096, description="a torchvision or timm state dict file, or safetensors"
    )
    sha256: Sha256 | None = Field(
        None, description="checked when given; computed when not (it is part of the id)"
    )
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
            raise ValueError(
                f"unknown preset {value!r}; use imagenet, dataset or {{mean: [...], std: [...]}}"
            )
        return value
    if isinstance(value, dict):
        try:
            return Normalization.model_validate(value)
        except ValidationError as exc:
            raise ValueError(
                "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            ) from None
    return value


Preprocess = Annotated[str | Normalization, BeforeValidator(_parse_preprocess)]


class _ModelSection(Strict):
    model: ModelName
    init: WeightsInit | None = Field(None, description="start training from these weights")
    preprocess: Preprocess | None = Field(
        None,
        description="input normalisation inside the network: imagenet, dataset or {mean, std}; "
        "unset: imagenet for torchvision:/timm: models, dataset for registry models",
    )


class TeacherSection(_ModelSection):
    train: TrainConfig | None = None
    checkpoint: CheckpointRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.train is None) == (self.checkpoint is None):
            raise ValueError(
                "give exactly one of 'train' (train the teacher) or 'checkpoint' (load it)"
            )
        if self.checkpoint is not None and self.init is not None:
            raise ValueError(
                "'init' starts training from weights; a 'checkpoint' teacher is not trained: give "
                "one"
            )
        return self


class StudentSection(_ModelSection):
    loss: LossField = Field(
        CSKDLoss(kind="cskd"), description="a registered loss: {kind: ..., settings}"
    )
    train: TrainConfig


SECTIONS.register(
    "teacher",
    TeacherSection,
    Field(description="the teacher: trained here, or a checkpoint used as it is"),
)
SECTIONS.register(
    "student",
    StudentSection,
    Field(description="the student, its distillation loss and its training"),
)
