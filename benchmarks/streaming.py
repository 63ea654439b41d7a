"""Streaming image folders: peak memory of one training epoch at N and 4N images, and the
loader's throughput against torchvision's ImageFolder + DataLoader.

The images are CIFAR-10 JPEGs (the image-folder copy, a folder or its .tar.gz) resized
to 128 px and written as JPEG into a temporary folder, round robin over the classes.

- Memory: each case trains one epoch (``--model``, batch 64, SGD) in a fresh process and
  reports that process's peak RSS and its largest child's (a decoding worker; ``ru_maxrss``). Streaming
  should stay flat from N to 4N; the in-memory path is measured beside it for contrast.
- Throughput: images/s out of each loader into a consumer that converts the batch to
  float (what the training step receives), 2 workers each, the same transforms
  (RandomResizedCrop(128) and horizontal flip, transforms.v2), measured in one process,
  alternating rounds, median of ``--rounds``.

    python benchmarks/streaming.py --source ../shared/data/cifar10-jpeg.tar.gz --out bench/streaming.json
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 128


def _sources(source: Path):
    """(class name, JPEG bytes) of the training images, in the archive's or the folder's order."""
    if source.is_dir():
        for path in sorted((source / "train").glob("*/*.jpg")):
            yield path.parent.name, path.read_bytes()
        return
    with tarfile.open(source) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and "train" in parts and member.name.endswith(".jpg"):
                yield parts[-2], tar.extractfile(member).read()


def write_folder(source: Path, root: Path, count: int) -> Path:
    """``count`` training images (and 1 test image per class) at SIZE px, balanced over classes."""
    from PIL import Image

    per_class: dict[str, list[bytes]] = {}
    for cls, data in _sources(source):
        per_class.setdefault(cls, []).append(data)
    classes = sorted(per_class)
    for i in range(count):
        cls = classes[i % len(classes)]
        image = Image.open(io.BytesIO(per_class[cls][i // len(classes)])).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        image.save(root / "train" / cls / f"{i}.jpg", quality=90)
    for cls in classes:
        (root / "test" / cls).mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(per_class[cls][-1])).convert("RGB").resize((SIZE, SIZE)).save(root / "test" / cls / "0.jpg")
    return root


def train_one_epoch(root: Path, stream: bool, workers: int, model: str) -> dict:
    """In this (fresh) process: load the folder and train one epoch; peak RSS in MiB."""
    from cskd.config import TrainConfig
    from cskd.data.imagefolder import load_imagefolder
    from cskd.engine import train
    from cskd.models import Preprocessed, create_model
    from cskd.objectives import CrossEntropy

    torch.set_num_threads(2)
    started = time.perf_counter()
    ds = load_imagefolder(root, image_size=SIZE, stream=stream, workers=workers)
    torch.manual_seed(0)
    net = Preprocessed(create_model(model, num_classes=ds.num_classes, in_channels=3), mean=ds.mean, std=ds.std)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment={"crop_padding": 4, "flip": True})
    with tempfile.TemporaryDirectory() as work:
        train(CrossEntropy(net), ds.train, ds.train.subset(torch.arange(0)), config, work_dir=Path(work),
              metrics_path=Path(work) / "m.jsonl", progress=False)
    return {"images": len(ds.train), "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_child_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def memory(root_n: Path, root_4n: Path, workers: int, model: str) -> list[dict]:
    rows = []
    for stream in (True, False):
        for root in (root_n, root_4n):
            out = subprocess.run([sys.executable, __file__, "--child", str(root), "--workers", str(workers), "--model", model,
                                  *(["--stream"] if stream else [])], check=True, capture_output=True, text=True)
            row = {"path": "streaming" if stream else "in memory", **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            rows.append(row)
    return rows


def throughput(root: Path, workers: int, rounds: int) -> dict:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from cskd.data.imagefolder import load_imagefolder
    from cskd.data.stream_loader import StreamLoader

    torch.set_num_threads(1)  # the consumer; the workers decode
    split = load_imagefolder(root, image_size=SIZE, stream=True, workers=workers).train
    ours = StreamLoader(split, batch_size=64, crop_padding=4, flip=True, seed=0)
    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip()])
    folder = ImageFolder(str(root / "train"), transform=transform)
    theirs = torch.utils.data.DataLoader(folder, batch_size=64, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=True, prefetch_factor=4)

    def rate(loader, epoch: int) -> float:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for batch in loader:
            x = batch[0]
            x = x if x.is_floating_point() else x.float() / 255.0  # what the training step receives
            images += x.shape[0]
        return images / (time.perf_counter() - started)

    rate(ours, 0), rate(theirs, 0)  # warm-up: workers start, files enter the page cache
    cskd, torchvision = [], []
    for r in range(rounds):  # alternate, so both see the same machine
        cskd.append(rate(ours, r + 1))
        torchvision.append(rate(theirs, r + 1))
    med_ours, med_theirs = statistics.median(cskd), statistics.median(torchvision)
    return {"images": len(split), "workers": workers, "batch_size": 64, "rounds": rounds,
            "cskd_stream_images_per_s": round(med_ours, 1), "torchvision_imagefolder_images_per_s": round(med_theirs, 1),
            "ratio": round(med_ours / med_theirs, 3),
            "all_rounds": {"cskd": [round(v, 1) for v in cskd], "torchvision": [round(v, 1) for v in torchvision]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the CIFAR-10 image-folder copy (folder or .tar.gz)")
    parser.add_argument("--n", type=int, default=2000, help="N: the memory benchmark also runs 4N")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="torchvision:mobilenet_v3_small", help="the network trained for the memory figures")
    parser.add_argument("--out", default="bench/streaming.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_one_epoch(args.child, args.stream, args.workers, args.model)))
        return
    if args.source is None or not args.source.exists():
        parser.error("--source: the CIFAR-10 image-folder copy (a folder with train/, or its .tar.gz) is needed")
    with tempfile.TemporaryDirectory() as tmp:
        root_n = write_folder(args.source, Path(tmp) / "n", args.n)
        root_4n = write_folder(args.source, Path(tmp) / "4n", 4 * args.n)
        result = {"image_size": SIZE, "cpu_threads": 2,
                  "throughput": throughput(root_4n, args.workers, args.rounds),
                  "model": args.model, "memory": memory(root_n, root_4n, args.workers, args.model)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    t = result["throughput"]
    print(f"loader, {t['images']} images at {SIZE} px, {t['workers']} workers: cskd {t['cskd_stream_images_per_s']} "
          f"images/s, torchvision ImageFolder {t['torchvision_imagefolder_images_per_s']} images/s "
          f"(ratio {t['ratio']})")
    for row in result["memory"]:
        print(f"{row['path']:>10} {row['images']:>6} images: peak RSS {row['peak_rss_mib']} MiB "
              f"(largest child {row['largest_child_peak_rss_mib']} MiB), {row['seconds']} s")


if __name__ == "__main__":
    main()
