"""Image folders streamed from disk: the same images as in memory, batches that do not depend
on how many workers or processes decode them, ImageNet-style views from 64 px, and a
corrupt file named when a worker meets it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cskd.config import TrainConfig
from cskd.data import DeviceLoader
from cskd.data.decode import decode_image
from cskd.data.imagefolder import load_imagefolder
from cskd.data.stream_loader import StreamLoader, _EpochOrder
from cskd.data.streaming import FileSplit
from cskd.errors import DataError

CLASSES = ("ant", "bee", "cat")


def _folder(root, *, size=16, train=12, test=4, suffix="png"):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for k, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                image[..., k] //= 4  # a class colour: learnable
                Image.fromarray(image).save(root / split / cls / f"{i}.{suffix}")
    return root


def _loader(split, **kw):
    args = {"batch_size": 8, "crop_padding": 2, "flip": True, "seed": 3, **kw}
    return (DeviceLoader if "images" in split.__dataclass_fields__ else StreamLoader)(split, **args)


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(w.clone(), y.clone(), None if s is None else s.clone()) for w, y, s in loader]


def test_a_streamed_folder_reads_the_images_the_in_memory_path_decodes(tmp_path):
    root = _folder(tmp_path / "images")
    memory = load_imagefolder(root)
    stream = load_imagefolder(root, stream=True)
    assert isinstance(stream.train, FileSplit) and stream.train.sample_shape == (3, 16, 16)
    for a, b in ((memory.train, stream.train), (memory.test, stream.test)):
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, torch.cat(list(b.batches(5))))  # PNG: lossless, bit for bit
        assert torch.equal(a.head(7), b.head(7))
    # The statistics come from a sample of 2,000 images: here the whole split, summed in float64.
    assert memory.mean == pytest.approx(stream.mean, abs=2e-4)
    assert memory.std == pytest.approx(stream.std, abs=2e-4)


def test_streamed_batches_do_not_depend_on_the_workers_or_the_processes(tmp_path):
    split = load_imagefolder(_folder(tmp_path / "images"), stream=True).train
    one = _epoch(_loader(split, strong=True))
    assert torch.equal(torch.cat([y for _, y, _ in one]), split.labels[torch.randperm(
        len(split), generator=torch.Generator().manual_seed(3 * 1_000_003))[:32]])  # DeviceLoader's order
    two_workers = _epoch(_loader(FileSplit(split.paths, split.labels, split.size, split.channels, workers=2),
                                 strong=True))
    ranks = [_epoch(_loader(split, strong=True, shard=(r, 2))) for r in range(2)]
    for step, (weak, labels, strong) in enumerate(one):
        assert torch.equal(weak, two_workers[step][0]) and torch.equal(strong, two_workers[step][2])
        # Rank r of 2 holds rows r, r + 2, ... of the global batch: the slices DeviceLoader keeps.
        for r in range(2):
            assert torch.equal(weak[r::2], ranks[r][step][0]) and torch.equal(labels[r::2], ranks[r][step][1])
    assert not torch.equal(one[0][0], _epoch(_loader(split, strong=True), epoch=1)[0][0])  # a new epoch, new draws
    assert torch.equal(one[0][0], _epoch(_loader(split, strong=True))[0][0])  # the same seed and epoch: the same


def test_without_augmentation_streaming_trains_the_in_memory_weights(tmp_path):
    """Same order, same images: the engine cannot tell the two paths apart."""
    from cskd.engine import train
    from cskd.models import create_model
    from cskd.objectives import CrossEntropy

    root = _folder(tmp_path / "images")
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, augment={"crop_padding": 0, "flip": False})
    weights = []
    for stream in (False, True):
        ds = load_imagefolder(root, stream=stream)
        torch.manual_seed(0)
        net = create_model("resnet8", num_classes=3, in_channels=3)
        last = train(CrossEntropy(net), ds.train, ds.test, config, work_dir=tmp_path / f"work{stream}",
                     metrics_path=tmp_path / f"m{stream}.jsonl", progress=False)
        weights.append((net.state_dict(), last))
    (a, last_a), (b, last_b) = weights
    assert last_a["val_top1"] == last_b["val_top1"] and last_a["loss"] == pytest.approx(last_b["loss"], abs=1e-6)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_from_64_px_training_views_are_random_resized_crops_and_evaluation_a_centre_crop(tmp_path):
    from torchvision.transforms import v2

    root = _folder(tmp_path / "images", size=96, train=4, test=2, suffix="jpg")
    ds = load_imagefolder(root, image_size=64, stream=True)
    assert ds.image_size == (64, 64) and ds.train.imagenet_style
    image = decode_image(str(ds.test.paths[0]), channels=3)
    expected = v2.functional.center_crop(v2.functional.resize(image, [73], antialias=True), [64, 64])
    assert torch.equal(ds.test.head(1)[0], expected)
    loader = _loader(ds.train, batch_size=4, crop_padding=4, flip=False)
    assert loader._loader.dataset.crop_padding == 0  # the random resized crop replaces the pad-crop
    first, second = _epoch(loader), _epoch(loader, epoch=1)
    assert first[0][0].shape == (4, 3, 64, 64)
    assert not torch.equal(first[0][0], second[0][0])
    assert not any(torch.equal(first[0][0][0] * 255, ds.train.eval_view(decode_image(p, channels=3)).float()) for p in ds.train.paths)


def test_a_corrupt_image_met_by_a_worker_stops_with_one_line_naming_it(tmp_path):
    root = _folder(tmp_path / "images")
    split = load_imagefolder(root, stream=True).train  # (its statistics' sample would meet the file first)
    bad = root / "train" / "bee" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    for workers in (0, 2):
        loader = _loader(FileSplit(split.paths, split.labels, split.size, split.channels, workers=workers))
        with pytest.raises(DataError) as info:
            _epoch(loader)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_the_epoch_order_at_50000_images_splits_every_global_batch_between_ranks():
    """The sampler at a user's size (paths only, nothing decoded): every image once per epoch,
    each global batch split between 4 ranks, and each image's seed the same on every rank."""
    n = 50_000
    split = FileSplit(np.array([f"/x/{i}.jpg" for i in range(n)]), torch.randint(0, 100, (n,)), size=32, channels=3)
    per_rank = []
    for r in range(4):
        loader = StreamLoader(split, batch_size=256, seed=1, shard=(r, 4))
        loader.order = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
        per_rank.append(list(_EpochOrder(loader)))
    assert all(len(batches) == n // 256 for batches in per_rank)
    seen = [item for batches in per_rank for batch in batches for item in batch]
    assert len(seen) == (n // 256) * 256 and len({i for i, _ in seen}) == len(seen)
    assert len({s for _, s in seen}) == len(seen)  # a seed per image
    assert all(len(batch) == 64 for batches in per_rank for batch in batches)


def test_the_random_resized_crop_box_keeps_torchvisions_scale_and_ratio_bounds():
    import math
    import random

    from cskd.data.augment import resized_crop_box

    rng = random.Random(0)
    for height, width in ((96, 96), (120, 80), (64, 300)):
        for _ in range(2000):
            top, left, h, w = resized_crop_box(height, width, rng)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
            if (h, w) != (height, width) and top != (height - h) // 2:  # not the fallback
                # Rounding h and w moves area and ratio a little past the drawn bounds.
                assert 0.08 * 0.9 <= h * w / (height * width) <= 1.0
                assert 3 / 4 * 0.9 <= w / h <= 4 / 3 / 0.9
    # The same distribution as torchvision's own draws: the mean crop area (about 0.48) agrees.
    from torchvision.transforms import v2

    torch.manual_seed(0)
    theirs = v2.RandomResizedCrop(96).make_params
    image = torch.zeros(3, 120, 80)
    ours = [math.prod(resized_crop_box(120, 80, rng)[2:]) / 9600 for _ in range(8000)]
    torchvisions = [(lambda p: p["height"] * p["width"] / 9600)(theirs([image])) for _ in range(8000)]
    assert abs(sum(ours) / 8000 - sum(torchvisions) / 8000) < 0.015


def test_default_workers_share_the_cores_among_the_training_processes(monkeypatch):
    import os

    from cskd.data.streaming import decoding_workers

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decoding_workers(None) == cores and decoding_workers(3) == 3 and decoding_workers(0) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores: one worker each
    assert decoding_workers(None) == 1 and decoding_workers(5) == 5


def test_a_dropped_loader_is_freed_at_once_so_no_later_worker_inherits_it(tmp_path):
    """Found on the CIFAR-10 folder: the teacher's loader, kept alive by a reference cycle, was
    collected inside a worker forked for the student's loader and printed a traceback there."""
    import gc
    import weakref

    split = load_imagefolder(_folder(tmp_path / "images"), stream=True).train
    gc.disable()
    try:
        loader = _loader(FileSplit(split.paths, split.labels, split.size, split.channels, workers=2))
        _epoch(loader)
        alive = weakref.ref(loader)
        del loader
        assert alive() is None  # freed by reference counting, without waiting for a collection
    finally:
        gc.enable()
