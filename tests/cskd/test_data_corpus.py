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
from PIL import ImageOps as ImageOpsT

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
               "huge label": {"000000100.cls": b"99999999999999999999999", "000000100.png": png.getvalue()},
               "no label": {"000000100.png": png.getvalue()}}.get(bad)
    if bad == "label claims 10^11 bytes":  # a header whose size no reader may trust
        info = tarfile.TarInfo("000000100.cls")
        info.size = 10**11
        target.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + b"7".ljust(512, b"\0") + b"\0" * 1024)
    elif members is None:  # not a tar at all (a compressed one reads the same)
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
    "shard label of 23 digits": (lambda r: _shards(r, bad="huge label"), "000000100.cls: label '99999999999999999999' is not a class index"),
    "shard label claiming 10^11 bytes": (lambda r: _shards(r, bad="label claims 10^11 bytes"),
                                         "000000100.cls: a .cls label of 100,000,000,000 bytes"),
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


# ---- one decoder for every path ---------------------------------------------------------
def _exif_rotated_jpeg(path, rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)


def _every_mode(root) -> dict[str, str]:
    """A folder with one 8x8 image per Pillow mode the pipeline accepts; returns file -> mode."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    files = {
        "1.png": Image.fromarray(gray > 127).convert("1"),
        "L.png": Image.fromarray(gray), "L.jpg": Image.fromarray(gray),
        "LA.png": Image.fromarray(np.stack([gray, 255 - gray], -1), mode="LA"),
        "P.png": Image.fromarray(rgb).convert("P"),
        "RGB.png": Image.fromarray(rgb), "RGB.jpg": Image.fromarray(rgb), "RGB.bmp": Image.fromarray(rgb),
        "RGB.webp": Image.fromarray(rgb),
        "RGBA.png": Image.fromarray(np.concatenate([rgb, gray[..., None]], -1), mode="RGBA"),
        "CMYK.jpg": Image.fromarray(rgb).convert("CMYK"),
        "I;16.png": Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16)),
        "I.tif": Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.int32), mode="I"),
        "F.tif": Image.fromarray(rng.random((8, 8)).astype(np.float32), mode="F"),
    }
    modes = {}
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
        for name, img in files.items():
            img.save(root / split / "a" / name, **({"quality": 95} if name.endswith(".jpg") else {}))
            modes[name] = img.mode
        _exif_rotated_jpeg(root / split / "a" / "RGB-exif6.jpg", rgb)
        Image.fromarray(gray).save(root / split / "b" / "0.png")
    modes["RGB-exif6.jpg"] = "RGB"
    return modes


@pytest.mark.parametrize("grayscale", [False, True])
def test_every_mode_decodes_identically_in_memory_streamed_from_shards_and_in_predict_py(tmp_path, grayscale):
    import importlib.util

    import torch

    from cskd.data.imagefolder import list_folder, load_imagefolder
    from cskd.data.shards import load_shards, write_shards
    from stages.ship import PREDICT_SCRIPT

    modes = _every_mode(tmp_path / "folder")
    assert set(modes.values()) >= {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"}
    in_memory = load_imagefolder(tmp_path / "folder", grayscale=grayscale).train.images
    streamed = load_imagefolder(tmp_path / "folder", grayscale=grayscale, stream=True, workers=2).train
    write_shards(tmp_path / "folder", tmp_path / "shards", shard_size=5, log=lambda line: None)
    sharded = load_shards(str(tmp_path / "shards" / "train-{000000..000003}.tar"),
                          str(tmp_path / "shards" / "test-000000.tar"), grayscale=grayscale, workers=2).train
    assert torch.equal(in_memory, streamed.head(len(streamed)))  # through the DataLoader's worker processes
    assert torch.equal(in_memory, sharded.head(len(sharded)))
    spec = importlib.util.spec_from_file_location("predict", PREDICT_SCRIPT)
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)  # the bundle's copy of the rules, which imports nothing of ours
    paths, _ = list_folder(tmp_path / "folder" / "train", ["a", "b"])
    channels = 1 if grayscale else 3
    for path, image in zip(paths, in_memory, strict=True):
        with Image.open(path) as img:
            assert np.array_equal(predict.decode(img, channels), image.numpy()), path.name
    # and what the rules say, for the modes whose meaning is ours to define
    by_name = {p.name: image.numpy() for p, image in zip(paths, in_memory, strict=True)}
    with Image.open(tmp_path / "folder/train/a/I;16.png") as img:
        expected = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257), 0, 255)
    assert np.array_equal(by_name["I;16.png"][0], expected)  # 16-bit scaled, not clipped at 255
    with Image.open(tmp_path / "folder/train/a/F.tif") as img:
        assert np.array_equal(by_name["F.tif"][0], np.clip(np.rint(np.asarray(img, np.float64) * 255), 0, 255))
    with Image.open(tmp_path / "folder/train/a/RGB-exif6.jpg") as img:
        upright = np.asarray(ImageOpsT.exif_transpose(img).convert("L" if grayscale else "RGB"))
    assert np.array_equal(by_name["RGB-exif6.jpg"], upright[None] if grayscale else upright.transpose(2, 0, 1))
    assert np.array_equal(by_name["RGBA.png"], by_name["RGB.png"])  # alpha dropped, not composited


def _bomb_png(path, side: int = 30_000) -> None:
    """An 8-bit gray PNG of side x side zeros (900 MB decoded), about 1 MB on
    disk: written row by row, never held in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _peak_run(folder) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of `cskd-pipeline run` and every process it starts,
    measured by a parent of its own (RUSAGE_CHILDREN of this test's process holds earlier children)."""
    import subprocess
    import sys

    probe = ("import resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'pipeline.cli', 'run', "
             "'-m', 'm.yaml', '-q'], capture_output=True, text=True); sys.stderr.write(p.stderr); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=folder)
    code, peak_kib = map(int, result.stdout.split())
    return code, result.stderr, peak_kib


@pytest.mark.slow  # four pipeline processes with their peak memory measured: about 20 s
@pytest.mark.parametrize("in_memory", [True, False])
def test_a_decompression_bomb_is_refused_by_name_in_both_paths_with_little_memory(workdir, in_memory):
    """A 1 MB PNG of 30000x30000 pixels (900 MB decoded; the red team's streamed run peaked at
    3.7 GB). Importing torch alone takes about 850 MB of RSS on these machines, so the bound is
    what the bomb adds: its run peaks within 64 MiB of the same run refusing a broken 8x8 file,
    and below 1.5 GB in all."""
    _folder(workdir / "data")
    bomb = workdir / "data" / "train" / "b" / "5.png"
    bomb.write_bytes(bomb.read_bytes()[:40])  # first: a small broken file, refused on the same path
    data = {"name": "imagefolder", "root": "data", "grayscale": True, "image_size": 8, "in_memory": in_memory}
    write_manifest(workdir, edited(data=data), "m.yaml")
    code, _, baseline_kib = _peak_run(workdir)
    assert code == 2
    _bomb_png(bomb)
    assert bomb.stat().st_size < 2_000_000
    code, stderr, peak_kib = _peak_run(workdir)
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "data/train/b/5.png" in stderr and "max_image_pixels" in stderr, stderr
    assert "Traceback" not in stderr
    assert peak_kib - baseline_kib < 64 * 1024, f"the bomb added {(peak_kib - baseline_kib) / 1024:.0f} MiB"
    assert peak_kib < 1536 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
