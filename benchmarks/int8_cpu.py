"""What INT8 buys on this CPU, and what limits it: ONNX Runtime FP32 against every INT8
variant we can build from the same FP32 export, side by side in one process.

Two models, both trained here (no downloads):
- ``resnet8x4-cifar10``: resnet8x4 at 3x32x32, trained with cross-entropy on a subset of the
  CIFAR-10 JPEG copy (weights cached in bench/cache); accuracy on its 10,000 test images.
- ``quickstart``: the quickstart's own student (manifests/quickstart.yaml run end to end in a
  temporary folder, ONNX target only); accuracy on the digits test split (360 images).

Variants (U8S8, weights per channel, min-max on training images, after quant_pre_process, as
the pipeline quantizes, unless the name says otherwise): Conv, Gemm and MatMul only
(``int8.operators: weighted``, the default before ``auto``);
7-bit weights (``int8.reduce_range``); every operator quantized (``int8.operators: all``) with
8- and 7-bit weights; the QOperator format; the first convolution kept in float; ORT's QDQ
clean-up session option; OpenVINO FP32 and OpenVINO INT8 reading the same files. Timings: interleaved rounds, median of the per-round
p50s. A per-operator profile of ORT INT8 at batch 64 says where the time goes.

    python benchmarks/int8_cpu.py --cifar ../shared/data/cifar10-jpeg.tar.gz --out bench/int8_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cskd.checkpoint import load_weights, save_weights  # noqa: E402
from cskd.config import TrainConfig  # noqa: E402
from cskd.data import load_dataset, split_train_val  # noqa: E402
from cskd.engine import train  # noqa: E402
from cskd.models import Preprocessed, create_model  # noqa: E402
from cskd.objectives import CrossEntropy  # noqa: E402
from exports.cpu import machine_class, recorded_flags  # noqa: E402
from exports.latency import measure  # noqa: E402
from exports.onnx_export import export_onnx  # noqa: E402
from exports.quantize import (  # noqa: E402
    QUANTIZABLE_OPS,
    Int8Settings,
    _make_reader,
    preprocess,
    quantizable_nodes,
    quantize_int8,
)


def cifar_folder(source: Path, scratch: Path) -> Path:
    if source.is_dir():
        return source
    with tarfile.open(source) as tar:
        tar.extractall(scratch / "cifar10", filter="data")
    return next(p.parent for p in (scratch / "cifar10").rglob("train") if p.is_dir())


def resnet8x4_cifar(args, scratch: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """FP32 ONNX of a CE-trained resnet8x4, calibration images (train), test images and labels."""
    ds = load_dataset("imagefolder", root=cifar_folder(args.cifar, scratch))
    subset = ds.train.subset(torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))[:args.train_samples])
    train_split, val_split = split_train_val(subset, val_fraction=0.1, seed=0)
    torch.manual_seed(0)
    model = Preprocessed(create_model("resnet8x4", num_classes=10, in_channels=3), mean=ds.mean, std=ds.std)
    weights = ROOT / "bench/cache" / f"resnet8x4_cifar10_{args.train_samples}_{args.epochs}ep.safetensors"
    if weights.is_file():
        load_weights(model.net, weights)
    else:
        cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, schedule="cosine",
                          augment={"crop_padding": 4, "flip": True})
        train(CrossEntropy(model), train_split, val_split, cfg, work_dir=scratch / "train",
              metrics_path=scratch / "train.jsonl", progress=False)
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_weights(model.net, weights)
    fp32 = export_onnx(model.eval(), sample=torch.zeros(2, 3, 32, 32), path=scratch / "resnet8x4.onnx")
    return fp32, train_split.head(512).numpy(), ds.test.images.numpy(), ds.test.labels.numpy()


def quickstart(scratch: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """The quickstart's shipped FP32 student, and digits calibration and test images."""
    work = scratch / "quickstart"
    work.mkdir()
    run = [sys.executable, "-m", "pipeline.cli", "run", "-m", str(ROOT / "manifests/quickstart.yaml"), "-q",
           "-o", "export.targets=[onnx]", "-o", "latency=null"]
    proc = subprocess.run(run, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"quickstart run failed: {proc.stderr.strip()[-2000:]}")
    ds = load_dataset("digits")
    train_split, _ = split_train_val(ds.train, val_fraction=0.2, seed=0)
    return work / "shipped/quickstart/v1/student.onnx", train_split.head(256).numpy(), ds.test.images.numpy(), \
        ds.test.labels.numpy()


def build_variants(fp32: Path, calibration_u8: np.ndarray, out: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    prepared = preprocess(fp32, out / "prepared.onnx")
    calibration = calibration_u8.astype(np.float32) / 255.0
    first_conv = quantizable_nodes(prepared)[0]

    def pipeline(name: str, **settings) -> Path:  # what the quantize stage writes with these int8 settings
        return quantize_int8(prepared, out / f"{name}.onnx", calibration_images=calibration,
                             settings=Int8Settings(**settings))

    def qoperator() -> Path:  # the other format ONNX Runtime writes (not a pipeline setting)
        path = out / "qop.onnx"
        quantize_static(str(prepared), str(path), _make_reader(calibration, "images"), quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZABLE_OPS), extra_options={"WeightSymmetric": True})
        return path

    return {"int8 weighted": pipeline("qdq"), "int8 reduce_range": pipeline("qdq_rr", reduce_range=True),
            "int8 operators=all": pipeline("all", operators="all"),
            "int8 operators=all reduce_range": pipeline("all_rr", operators="all", reduce_range=True),
            "int8 qoperator": qoperator(),
            "int8 first conv float": quantize_int8(prepared, out / "first_float.onnx", calibration_images=calibration,
                                                   settings=Int8Settings(), exclude=[first_conv])}


def runners(fp32: Path, variants: dict[str, Path], threads: int) -> dict:
    """name -> callable(images float32) -> logits, every back-end sharing the thread count."""
    import onnxruntime as ort
    import openvino as ov

    def ort_run(path: Path, entries: dict | None = None):
        options = ort.SessionOptions()
        options.log_severity_level, options.intra_op_num_threads = 3, threads
        for key, value in (entries or {}).items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]

    def ov_run(path: Path):
        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda x: np.array(request.infer({0: x})[0], copy=True)

    out = {"onnx-fp32": ort_run(fp32), "openvino-fp32": ov_run(fp32)}
    out.update({name: ort_run(path) for name, path in variants.items()})
    out["int8 + qdq_cleanup session option"] = ort_run(variants["int8 weighted"],
                                                        {"session.enable_quant_qdq_cleanup": "1"})
    out["openvino-int8 weighted"] = ov_run(variants["int8 weighted"])
    out["openvino-int8 operators=all"] = ov_run(variants["int8 operators=all"])
    return out


def accuracy(run, images_u8: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate([run(images_u8[i:i + 256].astype(np.float32) / 255.0) for i in range(0, len(images_u8), 256)])
    return float((logits.argmax(1) == labels).mean() * 100.0)


def latency(runs: dict, shape: tuple, batch: int, rounds: int, timed: int) -> dict[str, float]:
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    p50s: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):  # interleaved: a slow spell of the shared CPU hits every variant alike
        for name, run in runs.items():
            p50s[name].append(measure(lambda r=run: r(x), batch=batch, warmup=5, runs=timed)["p50_ms"])
    return {name: float(np.median(v)) for name, v in p50s.items()}


def profile(path: Path, shape: tuple, batch: int, threads: int) -> dict[str, float]:
    """ONNX Runtime's per-operator kernel time (ms per run) of ``path`` at ``batch``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads, options.log_severity_level = True, threads, 3
    options.profile_file_prefix = str(path.with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    calls = 30
    for _ in range(calls):
        session.run(None, {"images": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / calls
    return {op: round(ms, 3) for op, ms in per_op.most_common()}


def study(name: str, fp32: Path, calibration: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, args, work: Path) -> dict:
    print(f"[{name}] building INT8 variants", flush=True)
    variants = build_variants(fp32, calibration, work)
    runs = runners(fp32, variants, args.threads)
    top1 = {n: accuracy(r, test_x, test_y) for n, r in runs.items()}
    shape = tuple(test_x.shape[1:])
    rows = []
    for batch in (1, 64):
        print(f"[{name}] timing at batch {batch}", flush=True)
        p50 = latency(runs, shape, batch, args.rounds, args.runs if batch == 1 else max(20, args.runs // 5))
        for n in runs:
            rows.append({"variant": n, "batch": batch, "p50_ms": round(p50[n], 4),
                         "speedup_vs_onnx_fp32": round(p50["onnx-fp32"] / p50[n], 3),
                         "test_top1": top1[n], "loss_vs_fp32": round(top1["onnx-fp32"] - top1[n], 2)})
    int8_profile = profile(variants["int8 weighted"], shape, 64, args.threads)
    all_profile = profile(variants["int8 operators=all"], shape, 64, args.threads)
    fp32_profile = profile(fp32, shape, 64, args.threads)
    conv_int8 = sum(ms for op, ms in int8_profile.items() if op in ("QLinearConv", "ConvInteger", "QGemm"))
    conv_fp32 = sum(ms for op, ms in fp32_profile.items() if op in ("Conv", "FusedConv", "Gemm"))
    passing = [r for r in rows if r["batch"] == 64 and r["variant"] != "onnx-fp32" and "int8" in r["variant"]
               and r["loss_vs_fp32"] <= args.max_loss]
    best = max(passing, key=lambda r: r["speedup_vs_onnx_fp32"], default=None)
    return {"model": name, "input": list(shape), "test_images": len(test_y), "rows": rows,
            "best_int8_at_batch_64": best and {"variant": best["variant"], "speedup": best["speedup_vs_onnx_fp32"],
                                              "loss_vs_fp32": best["loss_vs_fp32"]},
            "profile_batch_64_ms": {"int8 weighted": int8_profile, "int8 operators=all": all_profile,
                                    "onnx-fp32": fp32_profile},
            "conv_kernels_batch_64": {"int8_ms": round(conv_int8, 3), "fp32_ms": round(conv_fp32, 3),
                                      "speedup": round(conv_fp32 / conv_int8, 3),
                                      "int8_share_of_int8_time": round(conv_int8 / sum(int8_profile.values()), 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="the CIFAR-10 JPEG copy (folder or .tar.gz)")
    parser.add_argument("--out", default="bench/int8_cpu.json")
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per round at batch 1 (a fifth at batch 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-loss", type=float, default=0.5, help="test top-1 points the best INT8 may lose")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        studies = []
        for name, make in (("resnet8x4-cifar10", lambda: resnet8x4_cifar(args, scratch)),
                           ("quickstart", lambda: quickstart(scratch))):
            fp32, calibration, test_x, test_y = make()
            (scratch / f"int8-{name}").mkdir()
            studies.append(study(name, fp32, calibration, test_x, test_y, args, scratch / f"int8-{name}"))
    result = {"cpu_flags": recorded_flags(), "cpu_class": machine_class(), "threads": args.threads, "onnxruntime": onnxruntime.__version__,
              "openvino": openvino.__version__, "torch": torch.__version__,
              "resnet8x4_training": {"train_samples": args.train_samples, "epochs": args.epochs, "loss": "ce"},
              "studies": studies}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for s in studies:
        print(f"\n{s['model']} {s['input']}: conv kernels INT8 {s['conv_kernels_batch_64']['speedup']:.2f}x FP32, "
              f"{s['conv_kernels_batch_64']['int8_share_of_int8_time']:.0%} of INT8 time")
        print("| variant | batch | p50 ms | vs ORT FP32 | test top-1 | loss |\n|---|---|---|---|---|---|")
        for r in s["rows"]:
            print(f"| {r['variant']} | {r['batch']} | {r['p50_ms']:.3f} | {r['speedup_vs_onnx_fp32']:.2f}x | "
                  f"{r['test_top1']:.2f} | {r['loss_vs_fp32']:.2f} |")


if __name__ == "__main__":
    main()
