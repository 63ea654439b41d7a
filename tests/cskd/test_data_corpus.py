"""A corpus of corrupt data inputs: each stops the run with exit 2 and one line naming the file.

Every case is a small data set in its published layout, written here, broken in one
way, and run through `cskd-pipeline run` (the red team's cases from the real-data issue)."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from tests.conftest import edited, write_manifest


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()


def _fashion(root, *, train_labels=None, test_labels=None, train_n=64, label_n=None, corrupt_gz=False):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 255, (train_n, 8, 8))),
        "train-labels-idx1-ubyte.gz": _idx(train_labels if train_labels is not None
                                           else rng.integers(0, 10, label_n or train_n)),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 255, (32, 8, 8))),
        "t10k-labels-idx1-ubyte.gz": _idx(test_labels if test_labels is not None else rng.integers(0, 10, 32)),
    }
    root.mkdir()
    for name, body in files.items():
        data = gzip.compress(body)
        if corrupt_gz and name.startswith("train-images"):
            data = data[:20] + bytes(rng.integers(0, 255, 200, dtype=np.uint8)) + data[220:]
        (root / name).write_bytes(data)
    return "fashion_mnist", root / ("train-images-idx3-ubyte.gz" if corrupt_gz else
                                    "t10k-labels-idx1-ubyte.gz" if test_labels is not None else
                                    "train-labels-idx1-ubyte.gz")


def _folder(root, *, bad=None, empty_class=False, test_only_class=False):
    for split, n in (("train", 6), ("test", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 20 * i + 100 * (c == "b"), np.uint8)).save(root / split / c / f"{i}.png")
    target = root / "train" / "b" / "2.png"
    if bad == "random":
        target.write_bytes(np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes())
    elif bad == "truncated":
        target.write_bytes(target.read_bytes()[:40])
    if empty_class:
        (root / "train" / "c").mkdir()
        target = root / "train" / "c"
    if test_only_class:
        (root / "test" / "z").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "test" / "z" / "0.png")
        target = root / "test" / "z"
    return "imagefolder", target


def _cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 8).tolist()
        if name == "data_batch_3":
            labels[5] = 10
        batch = {b"data": rng.integers(0, 255, (8, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    return "cifar10", folder / "data_batch_3"


def _shards(root, *, bad):
    """Valid shards of a 2-class folder, plus a second training shard broken in one way."""
    import io
    import tarfile

    from cskd.data.shards import write_shards

    _folder(root / "folder")
    write_shards(root / "folder", root / "shards", shard_size=100, log=lambda line: None)
    target = root / "shards" / "train-000001.tar"
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    members = {"label 7": {"000000100.cls": b"7", "000000100.png": png.getvalue()},
               "no label": {"000000100.png": png.getvalue()}}.get(bad)
    if members is None:  # not a tar at all (a compressed one reads the same)
        target.write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    else:
        with tarfile.open(target, "w") as tar:
            for name, body in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return "webdataset", target


CASES = {
    "random-bytes png": (lambda r: _folder(r, bad="random"), "not a readable image"),
    "truncated png": (lambda r: _folder(r, bad="truncated"), "not a readable image"),
    "empty class folder": (lambda r: _folder(r, empty_class=True), "holds no images"),
    "class in test only": (lambda r: _folder(r, test_only_class=True), "in test but not in train"),
    "corrupt gz": (lambda r: _fashion(r, corrupt_gz=True), "corrupt or truncated"),
    "train label 200": (lambda r: _fashion(r, train_labels=np.full(64, 200)), "label 200"),
    "test label out of range": (lambda r: _fashion(r, test_labels=np.full(32, 12)), "label 12"),
    "400 images, 200 labels": (lambda r: _fashion(r, train_n=400, label_n=200), "200 labels for 400 images"),
    "cifar label 10": (_cifar, "label 10 at index 5"),
    "shard label 7 of 2 classes": (lambda r: _shards(r, bad="label 7"), "label 7 is outside [0, 2)"),
    "shard image without a label": (lambda r: _shards(r, bad="no label"), "not both"),
    "shard that is not a tar": (lambda r: _shards(r, bad="garbage"), "not a readable tar shard"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_input_exits_2_with_one_line_naming_the_file(workdir, case):
    make, says = CASES[case]
    name, culprit = make(workdir / "data")
    data = {"name": name, "root": "data"}
    if name in ("imagefolder", "webdataset"):
        data.update(grayscale=True, image_size=8)
    if name == "webdataset":
        data = {**data, "root": None, "train_shards": "data/shards/train-{000000..000001}.tar",
                "test_shards": "data/shards/test-000000.tar"}
    write_manifest(workdir, edited(data=data), "m.yaml")
    result = CliRunner().invoke(main, ["run", "-m", "m.yaml", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and says in result.output and str(culprit.relative_to(workdir)) in result.output, result.output
    assert not list((workdir / ".cskd").glob("artifacts/*/*"))  # nothing half-written
