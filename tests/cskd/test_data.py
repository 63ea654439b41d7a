"""Data loaders on real and on written-here files; the device loader and augmentation."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cskd.data import DeviceLoader, load_dataset, split_train_val
from cskd.data.augment import cutout, random_crop_flip, strong_view
from cskd.errors import DataError


def test_digits_has_fixed_splits():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 8, 8)
    assert len(a.test) == 1797 // 5 and len(a.train) == 1797 - 1797 // 5
    assert torch.equal(a.test.labels, b.test.labels)
    tr, va = split_train_val(a.train, val_fraction=0.1, seed=3)
    tr2, va2 = split_train_val(a.train, val_fraction=0.1, seed=3)
    assert torch.equal(va.labels, va2.labels) and len(tr) + len(va) == len(a.train)
    assert int(a.train.images.max()) == 255


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.randint(0, 256, (40, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", rng.randint(0, 10, (40,)))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.randint(0, 256, (20, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", rng.randint(0, 10, (20,)))
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.train.images.shape == (40, 1, 28, 28) and len(ds.test) == 20 and ds.num_classes == 10


def test_fashion_mnist_real_files(fashion_root):
    ds = load_dataset("fashion_mnist", root=fashion_root)
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="put them there"):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def _write_cifar100(root, n_train=30, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
                 b"fine_labels": rng.randint(0, 100, n).tolist(), b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    return folder


def test_cifar100_loader_on_small_files_in_the_same_format(tmp_path):
    _write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.num_classes == 100 and ds.class_names[5] == "c5"
    assert ds.mean == (0.5071, 0.4867, 0.4408)  # the recipe's normalisation


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    folder = _write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "train").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar100", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.randint(0, 256, (12, 12, 3)).astype(np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert ds.train.images.shape == (6, 3, 16, 16) and ds.class_names == ("cat", "dog")
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_device_loader_is_a_seeded_permutation():
    from cskd.data.datasets import Split

    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous(), torch.arange(10))
    loader = DeviceLoader(split, batch_size=4, shuffle=True, drop_last=False, seed=5)
    loader.set_epoch(0)
    first = torch.cat([y for _, y, _ in loader])
    assert sorted(first.tolist()) == list(range(10))  # every sample once
    again = torch.cat([y for _, y, _ in loader])
    assert torch.equal(first, again)  # same (seed, epoch) -> same order
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y, _ in loader]))
    for x, y, _ in loader:  # images stay paired with their labels
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_crop_flip_and_strong_view_shapes_ranges_and_determinism():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 16, 16, generator=g)
    y = random_crop_flip(x, torch.Generator().manual_seed(1), padding=4, flip=True)
    assert y.shape == x.shape
    # each output is exactly a crop of the zero-padded input at some shift in [-4, 4], maybe mirrored
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts_seen, flips_seen = set(), set()
    for i in range(len(x)):
        match = next(((dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                      if torch.equal(y[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 16, dx:dx + 16]))),
                     None)
        assert match is not None, f"image {i} is not a padded crop of its input"
        shifts_seen.add(match[:2])
        flips_seen.add(match[2])
    assert len(shifts_seen) > 5 and flips_seen == {False, True}  # the crops and flips really vary
    s1 = strong_view(x, torch.Generator().manual_seed(2), padding=4, flip=True)
    s2 = strong_view(x, torch.Generator().manual_seed(2), padding=4, flip=True)
    assert torch.equal(s1, s2) and s1.shape == x.shape
    assert float(s1.min()) >= 0.0 and float(s1.max()) <= 1.0
    assert not torch.allclose(s1, x)
    one = strong_view(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(3), padding=1, flip=False)
    assert one.shape == (4, 1, 8, 8)


def test_crop_without_padding_or_flip_is_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip=False), x)


def test_cutout_fills_a_square_with_the_authors_grey():
    x = torch.zeros(64, 3, 32, 32)
    out = cutout(x, torch.Generator().manual_seed(0))
    filled = (out != 0).any(dim=1)
    assert filled.any()
    assert filled.sum(dim=(1, 2)).max() <= 16 * 16
    r = out[:, 0][filled]
    assert torch.allclose(r, torch.full_like(r, 125 / 255))


def _pil_and_tensor(seed=0, size=12):
    from PIL import Image

    arr = np.random.RandomState(seed).randint(0, 256, (size, size, 3)).astype(np.uint8)
    arr[:, :3] //= 3  # skew the histogram so equalize and autocontrast have work to do
    return Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def _to_array(t):
    return (t[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().astype(int)


@pytest.mark.parametrize("channels", [3, 1])
def test_every_pixel_op_equals_pil_to_the_last_level(channels):
    """The strong view's ops that change values, against PIL as the authors call them, on 60
    images and a range of factors: equal everywhere (PIL blends in float32 and truncates, filters
    and converts to gray with rounding integers; autocontrast's lut is in double)."""
    from PIL import Image, ImageEnhance, ImageOps

    from cskd.data import enhance_ops as E

    def pil(arr):
        return Image.fromarray(arr if channels == 3 else arr[..., 0])

    def ours(u8):  # float values 0..255 -> the same layout as PIL's array
        out = u8[0].permute(1, 2, 0).numpy().astype(int)
        return out if channels == 3 else out[..., 0]

    rng = np.random.RandomState(1)
    for seed in range(60):
        arr = rng.randint(0, 256, (12, 12, 3)).astype(np.uint8)
        if seed % 3 == 0:
            arr = (arr // 4 + 60).astype(np.uint8)  # a narrow histogram: autocontrast and contrast work hard
        img = pil(arr)
        u8 = torch.from_numpy(arr[..., :channels].copy()).permute(2, 0, 1)[None].float()
        factor = torch.tensor([0.05 + 0.9 * rng.rand()], dtype=torch.float32)
        f = float(factor)
        cases = {
            "autocontrast": (E._autocontrast(u8), ImageOps.autocontrast(img)),
            "brightness": (E._blend(u8, torch.zeros_like(u8), factor), ImageEnhance.Brightness(img).enhance(f)),
            "color": (E._blend(u8, E._gray(u8), factor), ImageEnhance.Color(img).enhance(f)),
            "contrast": (E._blend(u8, E._contrast_mean(u8).expand_as(u8), factor), ImageEnhance.Contrast(img).enhance(f)),
            "sharpness": (E._sharpness(u8, factor), ImageEnhance.Sharpness(img).enhance(f)),
            "equalize": (E._equalize(u8 / 255.0) * 255.0, ImageOps.equalize(img)),
        }
        for name, (mine, theirs) in cases.items():
            assert np.array_equal(ours(mine.round()), np.asarray(theirs, dtype=int)), f"{name}({f:.3f}), image {seed}"


# --- The strong view's ops that move pixels, against PIL as the authors call it --------------------
# (their RandAugment: ``img.rotate(v)``, ``img.transform(size, AFFINE, ...)``,
#  ``ImageOps.posterize(img, int(v))``, ``CutoutAbs`` with ``ImageDraw.rectangle``).

def _pil_affine(img, coeffs):
    from PIL import Image

    return img.transform(img.size, Image.AFFINE, tuple(coeffs), resample=Image.NEAREST)


@pytest.mark.parametrize("size", [12, 32])
def test_geometric_ops_match_pil_pixel_for_pixel(size):
    from cskd.data import enhance_ops as E

    for seed, v in enumerate((-0.3, -0.17, 0.05, 0.22, 0.3)):
        img, x = _pil_and_tensor(seed, size)
        cases = {
            "shear_x": (1, v, 0, 0, 1, 0),      # about the top-left corner, as the authors' PIL call
            "shear_y": (1, 0, 0, v, 1, 0),
            "translate_x": (1, 0, v * size, 0, 1, 0),
            "translate_y": (1, 0, 0, 0, 1, v * size),
        }
        for name, coeffs in cases.items():
            ours = _to_array(E._affine(x, torch.tensor([coeffs], dtype=torch.float32)))
            theirs = np.asarray(_pil_affine(img, coeffs), dtype=int)
            assert np.array_equal(ours, theirs), f"{name}({v}) differs from PIL at {size}px"
        angle = v * 100  # -30 .. 30 degrees
        ours = _to_array(E._affine(x, E._rotation(torch.tensor([angle]), size, size)))
        theirs = np.asarray(img.rotate(angle), dtype=int)  # PIL default: NEAREST, black fill
        assert (ours == theirs).all(axis=-1).mean() >= 0.995, f"rotate({angle}) differs from PIL at {size}px"


def test_posterize_draws_4_to_7_bits_and_matches_pil():
    from PIL import ImageOps

    from cskd.data import augment as A
    from cskd.data import enhance_ops as E

    img, x = _pil_and_tensor(3, 16)
    for bits in (4, 5, 6, 7):  # the library's own op, at each bit depth its draw can take
        params = {"bits": torch.tensor([float(bits)]), "factor": torch.ones(1)}
        ours = E.apply_op("posterize", x, params)
        assert np.array_equal(_to_array(ours), np.asarray(ImageOps.posterize(img, bits), dtype=int))
    # the op's own draw: with every sample forced to posterize, only 4..7 bits occur
    g = torch.Generator().manual_seed(0)
    flat = torch.linspace(0, 1, 256).view(1, 1, 1, 256).expand(512, 1, 1, 256).contiguous()
    levels = set()
    for _ in range(20):
        out = A._random_op(flat, g)
        for row in out[:, 0, 0]:
            distinct = len(torch.unique((row * 255).round()))
            if distinct in (16, 32, 64, 128):
                levels.add(distinct)
    assert levels and max(levels) <= 128  # 8 bits (256 levels) never drawn as posterize


def test_cutout_matches_the_authors_cutoutabs_drawn_with_pil():
    from PIL import Image, ImageDraw

    from cskd.data import augment as A

    b, size = 200, 32
    x = torch.zeros(b, 3, size, size)
    out = A.cutout(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # replay the same draws: side, centre x, centre y (np.random.uniform(w): U(1, w))
    side = A._uniform(b, 0.0, 0.5, g, "cpu") * size
    cx, cy = A._uniform(b, 1.0, float(size), g, "cpu"), A._uniform(b, 1.0, float(size), g, "cpu")
    areas = []
    for i in range(b):
        v = float(side[i])
        x0 = int(max(0, float(cx[i]) - v / 2.0))
        y0 = int(max(0, float(cy[i]) - v / 2.0))
        x1, y1 = min(size, x0 + v), min(size, y0 + v)
        img = Image.new("RGB", (size, size))
        ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
        theirs = np.asarray(img, dtype=int)
        assert np.array_equal(_to_array(out[i:i + 1]), theirs), f"box {i} differs from PIL's"
        areas.append((theirs.sum(axis=-1) > 0).mean())
    assert 0.07 < float(np.mean(areas)) < 0.10  # the authors' ~8.4% mean area, not the clipped 6.7%


def test_the_digits_are_scikit_learns_read_without_importing_it():
    """The loader reads sklearn's bundled file itself (importing sklearn costs seconds of every
    run's start-up); its images and labels are exactly what ``load_digits`` returns."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from cskd.data.datasets import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    probe = ("import sys; from cskd.data.datasets import load_digits_dataset; load_digits_dataset(); "
             "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout.split()
    assert out[-1] == "False"
