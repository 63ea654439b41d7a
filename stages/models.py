"""Building, saving and loading the networks that stages pass to each other.

Weights files hold the bare network (``state_dict`` of the registry model);
normalisation is added from the data set's statistics when a model is built, so
exported models take pixels in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from cskd.checkpoint import load_weights, save_weights
from cskd.models import Preprocessed, create_model
from pipeline.core.manifest import DataSource
from stages.data import dataset

WEIGHTS_FILE = "model.safetensors"


def build_network(name: str, source: DataSource, *, seed: int | None = None) -> Preprocessed:
    ds = dataset(source)
    if seed is not None:
        torch.manual_seed(seed)  # weight initialisation is part of the recipe
    net = create_model(name, num_classes=ds.num_classes, in_channels=ds.in_channels)
    return Preprocessed(net, mean=ds.mean, std=ds.std)


def save_network(model: Preprocessed, out_dir: Path) -> Path:
    path = out_dir / WEIGHTS_FILE
    save_weights(model.net, path)
    return path


def load_network(name: str, source: DataSource, path: Path, *, sha256: str | None = None) -> Preprocessed:
    model = build_network(name, source)
    load_weights(model.net, path, expected_sha256=sha256)
    return model.eval()
