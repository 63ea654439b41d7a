"""Data for stages, through the views they declare in their configs.

A stage that reads the training split puts a ``TrainData`` in its config, one
that reads the test split a ``TestData``: the view is part of the stage's id, and
the stage gets exactly that split. A data set is decoded once per process
however many stages read it.
"""

from __future__ import annotations

import torch

from cskd.data import DataSet, Split, split_train_val
from stagekit.data_section import DataSource, TestData, TrainData


def dataset(source: DataSource) -> DataSet:
    return source.load()  # cached there: decoded once per process


def _limited(split: Split, limit: int | None, subset: str | None, seed: int | None) -> Split:
    """``limit`` samples: a seeded random subset in the split's order (the first ``limit``
    for artifacts made before subsets were random; an image folder is sorted by class)."""
    if limit is None or limit >= len(split):
        return split
    if subset == "random":
        pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed or 0))[
            :limit
        ]
        return split.subset(pick.sort().values)
    return split.subset(torch.arange(limit))


def train_val(view: TrainData) -> tuple[Split, Split]:
    """The seeded (train, val) split of the training split; the test split is never touched here."""
    train = _limited(
        dataset(view.source).train, view.max_train_samples, view.subset, view.split_seed
    )
    return split_train_val(train, val_fraction=view.val_fraction, seed=view.split_seed)


def held_out(view: TrainData) -> tuple[Split, str]:
    """Images for the checks made before validation (ONNX parity, the INT8 budget): the val
    split, or with ``val_fraction: 0`` the training images, and which of the two it is."""
    train, val = train_val(view)
    return (val, "val") if len(val) else (train, "train")


def test_split(view: TestData) -> Split:
    return _limited(dataset(view.source).test, view.max_test_samples, view.subset, view.split_seed)


def describe(source: DataSource) -> dict:
    """What a reader of a report or a model card needs to know about the data set."""
    ds = dataset(source)
    return {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "in_channels": ds.in_channels,
        "image_size": list(ds.image_size),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "class_names": list(ds.class_names),
    }
