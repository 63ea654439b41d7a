"""The data fingerprint: a changed image folder reruns exactly the stages that read it.

The red team's case: after a run on an image folder, test images were deleted and two
class folders swapped, and the rerun said `cached` for every stage and shipped the old
model. Each edit below is followed by `plan`, which must show what has to run again."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from tests.conftest import edited, write_manifest

CLASSES = ("circle", "square", "stripe")
TRAIN_READERS = {"teacher", "distill", "export", "validate", "gate", "ship"}  # and all they feed
RETRAINED = TRAIN_READERS | {"champion"}  # after a ship, a new student is compared with the champion
TEST_READERS = {"validate", "gate", "ship"}


def _image(kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (8, 8)).astype(np.uint8)
    if kind == "circle":
        x[2:6, 2:6] += 150
    elif kind == "square":
        x[1:7, 1:7] += 100
    else:
        x[:, ::2] += 180
    return Image.fromarray(x, mode="L")


def _write_folder(root):
    for split, n in (("train", 24), ("test", 8)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                _image(name, seed=1000 * c + i + (0 if split == "train" else 500)).save(folder / f"{i}.png")


def _to_run(folder, manifest) -> set[str]:
    result = CliRunner().invoke(main, ["plan", "-m", str(manifest)])
    assert result.exit_code == 0, result.output
    return {line.split()[0] for line in result.output.splitlines() if line.endswith("to run")}


@pytest.fixture
def folder_run(workdir):
    _write_folder(workdir / "images")
    def train():  # a fresh dict per section: a shared one would be dumped as a YAML anchor
        return {"epochs": 1, "batch_size": 16, "lr": 0.05, "augment": {"crop_padding": 1, "flip": False}}

    manifest = write_manifest(workdir, edited(data={"name": "imagefolder", "root": "images", "image_size": 8,
                                                    "grayscale": True, "val_fraction": 0.125},
                                              teacher__train=train(), student__train=train()))
    result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _to_run(workdir, manifest) == set()
    return workdir, manifest


def test_changing_removing_or_relabelling_test_images_reruns_validation_only(folder_run):
    folder, manifest = folder_run
    test = folder / "images" / "test"
    _image("square", seed=4242).save(test / "circle" / "0.png")  # change one image
    assert _to_run(folder, manifest) == TEST_READERS
    assert CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"]).exit_code == 0
    (test / "square" / "3.png").unlink()  # remove one
    assert _to_run(folder, manifest) == TEST_READERS
    assert CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"]).exit_code == 0
    os.rename(test / "circle", test / "tmp")  # swap two class folders: every label of theirs changes
    os.rename(test / "square", test / "circle")
    os.rename(test / "tmp", test / "square")
    assert _to_run(folder, manifest) == TEST_READERS


def test_adding_a_training_image_reruns_training_and_everything_after(folder_run):
    folder, manifest = folder_run
    _image("stripe", seed=777).save(folder / "images" / "train" / "stripe" / "new.png")
    assert _to_run(folder, manifest) == RETRAINED


def test_content_mode_ignores_a_touch_but_not_an_edit(folder_run):
    folder, manifest = folder_run
    text = manifest.read_text().replace("grayscale: true", "grayscale: true\n  fingerprint: content")
    # shipped apart, so the stat manifest's champion stays its own model
    content = write_manifest(folder, text.replace("dir: shipped", "dir: shipped-content"), "content.yaml")
    assert CliRunner().invoke(main, ["run", "-m", str(content), "--quiet"]).exit_code == 0
    image = folder / "images" / "test" / "stripe" / "1.png"
    os.utime(image, (1, 1))  # same bytes, new time: stat mode would rerun, content mode does not
    assert _to_run(folder, content) == set() and _to_run(folder, manifest) == TEST_READERS
    _image("circle", seed=99).save(image)
    assert _to_run(folder, content) == TEST_READERS


def test_fingerprint_of_50000_files_sees_one_changed_file(tmp_path):
    # The size of ImageNet's val split: one stat per file, and a single change is seen.
    from cskd.data.fingerprint import folder_fingerprint, forget

    root = tmp_path / "val"
    for c in range(100):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(500):
            (folder / f"{i}.JPEG").write_bytes(b"x")
    before = folder_fingerprint(str(root))
    assert folder_fingerprint(str(root)) == before  # cached within a plan
    (root / "n00000042" / "7.JPEG").write_bytes(b"xy")
    assert folder_fingerprint(str(root)) == before  # ...until the planner forgets
    forget()
    assert folder_fingerprint(str(root)) != before


def _restore_times(path, st) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_default_sees_a_rewrite_that_keeps_size_and_time(folder_run):
    folder, manifest = folder_run
    image = folder / "images" / "train" / "circle" / "0.png"
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    image.write_bytes(bytes(data))
    _restore_times(image, st)  # what `touch -r` does: size and modification time as before
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    assert _to_run(folder, manifest) == RETRAINED


def test_the_default_sees_an_equal_size_swap_between_classes_with_times_restored(folder_run):
    folder, manifest = folder_run
    a, b = folder / "images" / "test" / "circle" / "0.png", folder / "images" / "test" / "square" / "0.png"
    b.write_bytes(a.read_bytes()[:-1] + bytes([a.read_bytes()[-1] ^ 1]))  # equal sizes, other contents
    assert CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"]).exit_code == 0
    assert _to_run(folder, manifest) == set()
    sa, sb = a.stat(), b.stat()
    assert sa.st_size == sb.st_size
    os.rename(a, folder / "swap.png")  # a relabel: each file now sits in the other class
    os.rename(b, a)
    os.rename(folder / "swap.png", b)
    _restore_times(a, sa)  # every path keeps its size and modification time
    _restore_times(b, sb)
    assert _to_run(folder, manifest) == TEST_READERS
