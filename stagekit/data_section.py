"""The manifest's ``data`` section and the three views of it that stages declare:
``DataSource`` (which data set: its shape and classes), ``TrainData`` (the train/val
split, with the training files' fingerprint) and ``TestData`` (the test split, with
the test files' fingerprint). A stage's id covers exactly the view it declares."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, model_validator

from cskd.config import Strict
from cskd.data.datasets import DATASETS
from cskd.data.fingerprint import split_fingerprints
from foundation.contracts import Added, Located
from foundation.sections import SECTIONS

__all__ = ["DataSection", "DataSource", "TestData", "TrainData"]


class DataSource(Strict):
    """Which data set: what every stage that reads data, or its shape, depends on."""

    name: str
    root: str | None
    image_size: int | None
    grayscale: bool
    download: bool = Located(False, description="where files may come from, not what they are")
    # Streamed image folders are read differently from 64 px up (random resized crops, centre-crop
    # evaluation), so the resolved choice is part of the id; in memory it stays out (None).
    storage: Literal["stream"] | None = Added()
    # webdataset: brace patterns (their files' fingerprints are in the views)
    train_shards: str | None = Added()
    test_shards: str | None = Added()
    workers: int | None = Located(
        0,
        description="decoding processes (None: the cores, shared by the training "
        "processes): how fast, not what",
    )
    max_image_pixels: int | None = Located(
        None, description="a limit that refuses files, never changes pixels"
    )

    def load(self):
        """The data set (``cskd.data.DataSet``): in memory, or streamed from its files; decoded once
        per
        process however many stages (and searches) read it."""
        return _loaded(self)


@functools.lru_cache(maxsize=2)
def _loaded(source: DataSource):
    from cskd.data import load_dataset

    return load_dataset(
        source.name,
        root=source.root,
        download=source.download,
        image_size=source.image_size,
        grayscale=source.grayscale,
        stream=source.storage == "stream",
        workers=source.workers,
        train_shards=source.train_shards,
        test_shards=source.test_shards,
        max_image_pixels=source.max_image_pixels,
    )


class TrainData(Strict):
    """The training split as the training, export and quantize stages read it (train and val)."""

    source: DataSource
    fingerprint: str  # of the training files: a changed folder reruns what reads it
    val_fraction: float
    split_seed: int
    max_train_samples: int | None
    # with max_train_samples: a seeded random N, every class
    subset: Literal["random"] | None = Added()


class TestData(Strict):
    """The test split, read by validation only."""

    source: DataSource
    fingerprint: str  # of the test files and the class list
    max_test_samples: int | None
    subset: Literal["random"] | None = Added()
    split_seed: int | None = Added()


class DataSection(Strict):
    name: Literal[DATASETS]  # type: ignore[valid-type]
    root: str | None = Field(
        None, max_length=4096, description="folder holding the data set's files"
    )
    train_shards: str | None = Field(
        None,
        max_length=4096,
        description="webdataset: the training shards, a brace "
        "pattern such as shards/train-{000000..000099}.tar",
    )
    test_shards: str | None = Field(
        None, max_length=4096, description="webdataset: the test shards"
    )
    download: bool = Field(False, description="let torchvision download missing files")
    val_fraction: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="held-out slice of the training split; 0: train on "
        "all of it (nothing is selected on val; INT8 and parity checks read training images)",
    )
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    image_size: int | None = Field(
        None, ge=8, le=1024, description="imagefolder: resize to this square size"
    )
    grayscale: bool = Field(False, description="imagefolder: read images as one channel")
    max_train_samples: int | None = Field(
        None,
        ge=16,
        description="use only N training samples (a seeded random "
        "subset, so an image folder keeps every class)",
    )
    max_test_samples: int | None = Field(
        None, ge=16, description="validate on N test samples (seeded random subset)"
    )
    fingerprint: Literal["stat", "content"] = Field(
        "stat",
        description="stat: paths, sizes and times of the files; content: their bytes (slower)",
    )
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="imagefolder: true decodes every image into memory before training, false "
                    "streams them from disk in worker processes, auto streams when the decoded "
                    "training split would exceed memory_limit_mib",
    )
    memory_limit_mib: int = Field(
        2048,
        ge=1,
        description="imagefolder, in_memory: auto: the largest decoded "
        "training split kept in memory",
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="streaming: decoding processes per training "
        "process (default: the machine's cores divided by "
        "the training processes on it; 0 decodes in the "
        "training process)",
    )

    max_image_pixels: int | None = Field(
        None,
        ge=1,
        description="images with more pixels are refused (exit 2, naming the file) before they are "
        "decoded: decompression bombs; default: Pillow's limit (89,478,485)",
    )

    @model_validator(mode="after")
    def _root_needed(self) -> DataSection:
        if self.name == "webdataset":
            if not self.train_shards or not self.test_shards:
                raise ValueError(
                    "data set 'webdataset' needs 'train_shards' and 'test_shards' (brace patterns "
                    "of tar files, as `cskd-pipeline shard` writes them)"
                )
            return self
        if self.name != "digits" and self.root is None:
            raise ValueError(
                f"data set {self.name!r} needs 'root': the folder that holds its files"
            )
        return self

    def check_paths(self) -> None:
        """Raise ``ManifestError`` naming the field, the missing path and the fix that applies to
        this data source, before anything runs (and before a store is made)."""
        from pathlib import Path

        from foundation.errors import ManifestError

        if self.name == "webdataset":
            from cskd.data.shards import expand

            for field in ("train_shards", "test_shards"):
                missing = next(
                    (u for u in expand(getattr(self, field)) if not Path(u).is_file()), None
                )
                if missing is not None:
                    raise ManifestError(
                        f"data.{field}: {missing} not found; check the pattern "
                        f"{getattr(self, field)!r} (`cskd-pipeline shard` prints the right one)"
                    )
            return
        if self.name == "digits":
            return
        root = Path(self.root).expanduser()
        if self.name == "imagefolder":
            layout = "train/<class>/* and test/<class>/* (or val/<class>/*)"
            if not root.is_dir():
                raise ManifestError(
                    f"data.root: {root} not found; give the image folder that holds {layout}"
                )
            if not (root / "train").is_dir():
                raise ManifestError(
                    f"data.root: {root / 'train'} not found; the image folder needs {layout}"
                )
            if not (root / "test").is_dir() and not (root / "val").is_dir():
                raise ManifestError(
                    f"data.root: {root / 'test'} (or val) not found; the image folder needs "
                    f"{layout}"
                )
        elif not root.is_dir() and not self.download:
            raise ManifestError(
                f"data.root: {root} not found; put the {self.name} files there, or set "
                f"data.download: true where the network allows"
            )

    def streams(self) -> bool:
        """Whether the image folder is read from disk batch by batch (resolves ``in_memory:
        auto``)."""
        if self.name == "webdataset":
            return True
        if self.name != "imagefolder" or self.in_memory is True:
            return False
        if self.in_memory is False:
            return True
        from cskd.data.imagefolder import decoded_train_bytes
        from cskd.errors import DataError

        try:
            size = decoded_train_bytes(
                self.root, self.image_size, self.grayscale, self.max_train_samples
            )
        except DataError:  # a missing or broken folder: loading it says what is wrong
            return False
        return size > self.memory_limit_mib * 2**20

    def decided(self) -> DataSection:
        """This section with ``in_memory: auto`` resolved. The planner calls it once per plan: the
        decision lists the whole training folder, and every stage's view reads it."""
        if self.in_memory != "auto":
            return self
        return self.model_copy(update={"in_memory": not self.streams()})

    def source(self) -> DataSource:
        stream = self.streams()
        return DataSource(
            name=self.name,
            root=self.root,
            image_size=self.image_size,
            grayscale=self.grayscale,
            download=self.download,
            storage="stream" if stream else None,
            train_shards=self.train_shards,
            test_shards=self.test_shards,
            workers=self.workers if stream else 0,
            max_image_pixels=self.max_image_pixels,
        )

    def _fingerprints(self) -> tuple[str, str]:
        return split_fingerprints(
            self.name,
            self.root,
            self.fingerprint,
            train_shards=self.train_shards,
            test_shards=self.test_shards,
        )

    def train_view(self) -> TrainData:
        return TrainData(
            source=self.source(),
            fingerprint=self._fingerprints()[0],
            val_fraction=self.val_fraction,
            split_seed=self.split_seed,
            max_train_samples=self.max_train_samples,
            subset="random" if self.max_train_samples is not None else None,
        )

    def test_view(self) -> TestData:
        return TestData(
            source=self.source(),
            fingerprint=self._fingerprints()[1],
            max_test_samples=self.max_test_samples,
            subset="random" if self.max_test_samples is not None else None,
            split_seed=self.split_seed if self.max_test_samples is not None else None,
        )


SECTIONS.register(
    "data", DataSection, Field(description="the data set: where it is and how it is split")
)
