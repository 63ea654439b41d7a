"""The stage contract: what the runner gives a stage and what a stage gives back.

A stage has a ``kind`` (its name in the graph), an integer ``version`` (bump it
when its semantics change: that changes every id it produces), the kinds of
its ``inputs``, a ``config`` method naming the manifest parts its result depends
on, and one ``run`` hook. The runner, not the stage, does hashing, caching,
temporary folders and the atomic commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch

from cskd.data import DataSet, Split, load_dataset, split_train_val
from pipeline.manifest import Manifest
from pipeline.store import Artifact


class DataProvider:
    """Loads the manifest's data set once per run and hands out its splits.

    ``train`` and ``val`` come from the training split (a seeded split); ``test``
    is read only by validation stages.
    """

    def __init__(self, manifest: Manifest):
        self._section = manifest.data

    @cached_property
    def dataset(self) -> DataSet:
        s = self._section
        return load_dataset(s.name, root=s.root, download=s.download, image_size=s.image_size,
                            grayscale=s.grayscale)

    @cached_property
    def _train_val(self) -> tuple[Split, Split]:
        train = self.dataset.train
        if self._section.max_train_samples is not None:
            train = train.subset(torch.arange(min(len(train), self._section.max_train_samples)))
        return split_train_val(train, val_fraction=self._section.val_fraction, seed=self._section.split_seed)

    @property
    def train(self) -> Split:
        return self._train_val[0]

    @property
    def val(self) -> Split:
        return self._train_val[1]

    @cached_property
    def test(self) -> Split:
        test = self.dataset.test
        if self._section.max_test_samples is not None:
            test = test.subset(torch.arange(min(len(test), self._section.max_test_samples)))
        return test

    def describe(self) -> dict:
        ds = self.dataset
        return {"name": ds.name, "num_classes": ds.num_classes, "in_channels": ds.in_channels,
                "image_size": list(ds.image_size), "mean": list(ds.mean), "std": list(ds.std),
                "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "class_names": list(ds.class_names)}


@dataclass
class StageContext:
    manifest: Manifest
    out_dir: Path  # write outputs here (a temporary folder the runner commits)
    work_dir: Path  # resumable scratch that survives a killed run
    cache_dir: Path  # shared caches kept across artifacts (e.g. TensorRT timing cache)
    inputs: dict[str, Artifact]
    data: DataProvider
    progress: bool = True
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    metrics: dict
    headline: str = ""  # the main metric, for the one-line summary
    extra: dict = field(default_factory=dict)  # other record entries (e.g. preprocessing)


class Stage(ABC):
    kind: ClassVar[str]
    version: ClassVar[int]
    inputs: ClassVar[tuple[str, ...]] = ()

    def enabled(self, manifest: Manifest) -> bool:
        """Whether the manifest asks for this stage (optional stages override)."""
        return True

    def input_kinds(self, manifest: Manifest) -> tuple[str, ...]:
        """The kinds this stage reads; by default ``inputs``."""
        return self.inputs

    def preflight(self, manifest: Manifest) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise before any compute if something this stage needs is missing (a back-end, hardware)."""

    @abstractmethod
    def config(self, manifest: Manifest) -> dict:
        """The JSON-able recipe: every manifest value this stage's output depends on."""

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Compute the outputs into ``ctx.out_dir``."""


def dump(model) -> dict:
    """A pydantic section as canonical JSON data (aliases, no Python objects)."""
    return model.model_dump(mode="json", by_alias=True)
