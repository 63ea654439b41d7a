"""Building, saving and loading the networks that stages pass to each other.

Weights files hold the bare network (``state_dict`` of the model) and, in their
metadata, the normalisation the network was trained with; the model built around
them normalises its own input, so exported models take pixels in [0, 1]. Each model
has its own normalisation: the data set's statistics for registry models, ImageNet's
for torchvision and timm models (what their pretrained weights expect), or the
manifest's ``preprocess``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field

from cskd.checkpoint import load_weights, save_weights, sha256_file
from cskd.config import Strict
from cskd.models import Preprocessed, create_model
from cskd.models.sources import IMAGENET_MEAN, IMAGENET_STD, is_external
from foundation import plugins
from foundation.contracts import Located
from foundation.errors import ManifestError
from foundation.records import TrainedRecord
from stagekit.data import dataset
from stagekit.data_section import DataSource
from stagekit.model_sections import Normalization, WeightsInit, known_model

WEIGHTS_FILE = TrainedRecord.WEIGHTS


class InitRef(Strict):
    """Initial weights as a stage sees them: the file's sha256 is in the id, not its place."""

    path: str = Located()
    sha256: str
    format: str = Field(description="auto | torchvision | timm | safetensors")


def resolve_init(init: WeightsInit | None, *, field: str) -> InitRef | None:
    if init is None:
        return None
    path = Path(init.path)
    if not path.is_file():
        raise ManifestError(f"{field}.path: {path} not found; give the weights file to start from")
    digest = sha256_file(path)
    if init.sha256 is not None and init.sha256 != digest:
        raise ManifestError(
            f"{field}.sha256: {path} has sha256 {digest}, the manifest declares {init.sha256}; "
            f"fix the sha256 or the file"
        )
    return InitRef(path=str(path), sha256=digest, format=init.format)


def resolve_preprocess(model: str, preprocess) -> Normalization | None:
    """The normalisation a model is built with; None means the data set's statistics."""
    choice = (
        preprocess if preprocess is not None else ("imagenet" if is_external(model) else "dataset")
    )
    if choice == "dataset":
        return None
    if choice == "imagenet":
        return Normalization(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return choice


def _fit_channels(values: list[float] | tuple[float, ...], channels: int, what: str) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    if channels == 1:  # a grayscale data set with RGB statistics (ImageNet's): their mean
        return [sum(values) / len(values)]
    raise ManifestError(
        f"preprocess {what} has {len(values)} values, the data has {channels} channels"
    )


def build_network(
    name: str,
    source: DataSource,
    *,
    seed: int | None = None,
    preprocess: Normalization | None = None,
) -> Preprocessed:
    ds = dataset(source)
    if seed is not None:
        torch.manual_seed(seed)  # weight initialisation is part of the recipe
    try:
        known = known_model(name)  # loads a plug-in's model here too (in a training worker)
        net = create_model(known, num_classes=ds.num_classes, in_channels=ds.in_channels)
    except ValueError as exc:
        raise ManifestError(f"model {name}: {exc}") from None
    if name in plugins.loaded("models"):
        _check_head(name, net, ds.num_classes, (2, *ds.train.sample_shape))
    mean, std = (preprocess.mean, preprocess.std) if preprocess is not None else (ds.mean, ds.std)
    return Preprocessed(
        net,
        mean=_fit_channels(mean, ds.in_channels, "mean"),
        std=_fit_channels(std, ds.in_channels, "std"),
    )


def _check_head(name: str, net: torch.nn.Module, classes: int, shape: tuple[int, ...]) -> None:
    """A plug-in's network gives one logit per class for the data's images (the check a built-in
    model has from its tests): one line naming the plug-in, never a shape error mid-training."""
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - someone else's network: its failure is the message
        why = f"builds a network that fails on {list(shape)} images ({type(exc).__name__}: {exc})"
        raise plugins.failed("models", name, why[:300]) from None
    finally:
        net.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (shape[0], classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        why = (
            f"builds a network that gives {got} for {list(shape)} images, not "
            f"[{shape[0]}, {classes}]: its factory must size the head by num_classes"
        )
        raise plugins.failed("models", name, why)


def save_network(model: Preprocessed, out_dir: Path) -> Path:
    path = out_dir / WEIGHTS_FILE
    save_weights(
        model.net,
        path,
        metadata={
            "mean": json.dumps(model.mean.flatten().tolist()),
            "std": json.dumps(model.std.flatten().tolist()),
        },
    )
    return path


def load_network(
    name: str, source: DataSource, path: Path, *, sha256: str | None = None
) -> Preprocessed:
    """The network saved by ``save_network``, with the normalisation it was trained with."""
    from safetensors import safe_open

    model = build_network(name, source)
    load_weights(model.net, path, expected_sha256=sha256)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    # files from before per-model normalisation: the data set's
    if "mean" in meta and "std" in meta:
        model.mean.copy_(torch.tensor(json.loads(meta["mean"])).view_as(model.mean))
        model.std.copy_(torch.tensor(json.loads(meta["std"])).view_as(model.std))
    return model.eval()
