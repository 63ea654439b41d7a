"""CPU latency and accuracy of a resnet8x4 student on Fashion-MNIST:
PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 (QDQ, U8S8, per-channel).

All timings in one process, side by side, same thread count; at least 100 timed
runs per cell after a warm-up. Writes JSON and prints a Markdown table.

    python benchmarks/latency.py --root ../shared/data/fashion-mnist --out bench/latency.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cskd.checkpoint import load_weights, save_weights  # noqa: E402
from cskd.config import TrainConfig  # noqa: E402
from cskd.data import load_dataset, split_train_val  # noqa: E402
from cskd.engine import train  # noqa: E402
from cskd.evaluate import predict_logits, top1  # noqa: E402
from cskd.models import Preprocessed, create_model  # noqa: E402
from cskd.objectives import CrossEntropy  # noqa: E402
from exports.latency import measure  # noqa: E402
from exports.onnx_export import export_onnx  # noqa: E402
from exports.ort_runtime import create_session, run_batched  # noqa: E402
from exports.quantize import Int8Settings, count_qdq, preprocess, quantize_int8  # noqa: E402


def trained_student(args, ds, train_split, val_split) -> Preprocessed:
    torch.manual_seed(0)
    model = Preprocessed(create_model(args.model, num_classes=10, in_channels=1), mean=ds.mean, std=ds.std)
    weights = Path(args.cache) / f"{args.model}_fashion_{args.train_samples}_{args.epochs}ep.safetensors"
    if weights.is_file():
        load_weights(model.net, weights)
        return model.eval()
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, schedule="cosine",
                      augment={"crop_padding": 2, "flip": True})
    with tempfile.TemporaryDirectory() as work:
        train(CrossEntropy(model), train_split, val_split, cfg, work_dir=Path(work), metrics_path=Path(work) / "m.jsonl",
              progress=False)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.net, weights)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/fashion-mnist")
    parser.add_argument("--out", default="bench/latency.json")
    parser.add_argument("--cache", default="bench/cache")
    parser.add_argument("--model", default="resnet8x4")
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_dataset("fashion_mnist", root=args.root)
    subset = ds.train.subset(torch.arange(args.train_samples))
    train_split, val_split = split_train_val(subset, val_fraction=0.1, seed=0)
    model = trained_student(args, ds, train_split, val_split)

    work = Path(tempfile.mkdtemp())
    fp32 = export_onnx(model, sample=torch.zeros(2, 1, 28, 28), path=work / "fp32.onnx", opset=18)
    prepared = preprocess(fp32, work / "prepared.onnx")
    calibration = train_split.images[:512].numpy().astype(np.float32) / 255.0  # training split only
    int8 = quantize_int8(prepared, work / "int8.onnx", calibration_images=calibration,
                         settings=Int8Settings(method="minmax", activation_type="uint8", per_channel=True))

    test_x, test_y = ds.test.images.numpy(), ds.test.labels
    sessions = {"onnx-fp32": create_session(fp32, threads=args.threads),
                "onnx-int8": create_session(int8, threads=args.threads)}
    accuracy = {"pytorch-eager": top1(predict_logits(model, ds.test.images), test_y)}
    for name, session in sessions.items():
        accuracy[name] = top1(torch.from_numpy(run_batched(session, test_x)), test_y)

    rows = []
    for batch in (1, 64):
        images = test_x[:batch]
        x = torch.from_numpy(images).float() / 255.0

        def eager(x=x):
            with torch.inference_mode():
                model(x)

        cells = {"pytorch-eager": measure(eager, batch=batch, warmup=20, runs=args.runs)}
        for name, session in sessions.items():
            cells[name] = measure(lambda s=session, i=images, b=batch: run_batched(s, i, batch_size=b), batch=batch,
                                  warmup=20, runs=args.runs)
        base = cells["onnx-fp32"]["throughput_ips"]
        for name, cell in cells.items():
            rows.append({"backend": name, **cell, "throughput_vs_onnx_fp32": cell["throughput_ips"] / base,
                         "test_top1": accuracy[name]})

    result = {"model": args.model, "parameters": sum(p.numel() for p in model.net.parameters()),
              "data": "fashion_mnist", "test_samples": len(test_y), "threads": args.threads,
              "int8": {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                       "calibration": "minmax, 512 training images", "preprocess": "quant_pre_process",
                       **count_qdq(int8)},
              "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| backend | batch | p50 ms | p90 ms | images/s | vs ONNX FP32 | test top-1 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['throughput_ips']:.0f} | "
              f"{r['throughput_vs_onnx_fp32']:.2f}x | {r['test_top1']:.2f} |")


if __name__ == "__main__":
    main()
