"""exports/: ONNX parity, FP16, INT8 QDQ structure and the accuracy fallback, the latency
statistics, and TensorRT (runs only where TensorRT and a GPU exist)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from cskd.data import load_dataset
from cskd.evaluate import predict_logits
from exports.errors import BackendUnavailable, ExportError
from exports.fp16 import convert_fp16
from exports.int8_fallback import quantize_with_fallback
from exports.latency import measure, summarize
from exports.onnx_export import export_onnx
from exports.ort_runtime import create_session, run_batched
from exports.quantize import (
    Int8Settings,
    count_qdq,
    preprocess,
    quantize_int8,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


class PixelClassifier(nn.Module):
    """Logistic regression on pixels behind a 1x1 conv whose second channel is a constant
    5000: harmless in float, but it stretches the per-tensor INT8 range of the activation
    so far that the pixel channel quantizes to nothing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2 * 64, 10)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 5000.0]))
        self.conv.requires_grad_(False)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.fixture(scope="module")
def outlier_model(digits, tmp_path_factory):
    torch.manual_seed(0)
    model = PixelClassifier()
    x = digits.train.images.float() / 255.0
    opt = torch.optim.Adam(model.fc.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        logits = model(x)
        # the constant channel's weights are driven to zero by the penalty
        loss = nn.functional.cross_entropy(logits, digits.train.labels) + 10 * model.fc.weight[:, 64:].abs().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.fc.weight[:, 64:] = 0
    path = tmp_path_factory.mktemp("outlier") / "model.onnx"
    export_onnx(model.eval(), sample=torch.zeros(2, 1, 8, 8), path=path, opset=18)
    return model, path


@pytest.fixture(scope="module")
def resnet_onnx(digits, tmp_path_factory):
    from cskd.config import TrainConfig
    from cskd.data import split_train_val
    from cskd.engine import train
    from cskd.models import Preprocessed, create_model
    from cskd.objectives import CrossEntropy

    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = Preprocessed(create_model("resnet8", num_classes=10, in_channels=1), mean=digits.mean, std=digits.std)
    tr, va = split_train_val(digits.train, val_fraction=0.1, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=64, schedule="cosine", augment={"crop_padding": 1, "flip": False})
    train(CrossEntropy(model), tr, va, cfg, work_dir=folder / "w", metrics_path=folder / "m.jsonl", progress=False)
    path = export_onnx(model.eval(), sample=torch.zeros(2, 1, 8, 8), path=folder / "model.onnx", opset=18)
    return model, path, folder


def test_onnx_has_dynamic_batch_and_matches_pytorch(resnet_onnx, digits):
    model, path, _ = resnet_onnx
    proto = onnx.load(str(path))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch
    session = create_session(path)
    for n in (1, 7, 359):  # batch sizes other than the export sample's
        onnx_logits = run_batched(session, digits.test.images[:n].numpy(), batch_size=n)
        torch_logits = predict_logits(model, digits.test.images[:n]).numpy()
        assert np.abs(onnx_logits - torch_logits).max() < 1e-4
        assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()


class _Residual(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return (x + self.inner(x)).mean(1, keepdim=True)


def test_the_shared_function_table_changes_no_byte_and_is_private_to_our_export(resnet_onnx, tmp_path, monkeypatch):
    """export_onnx builds the exporter's ATen -> ONNX table once per process (issue 39): the file is
    byte for byte what the exporter makes with its own table, and a user's own torch.onnx.export
    afterwards gets a fresh table (one it may add to without changing ours)."""
    import contextlib

    from torch.onnx._internal.exporter import _registration

    from exports import onnx_export

    _, path, _ = resnet_onnx  # exported with the shared table
    # a residual block and a head (a third of resnet8's export time): the operators of our students
    block = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    model = torch.nn.Sequential(_Residual(block), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(1, 3)).eval()
    shared = export_onnx(model, sample=torch.zeros(2, 1, 8, 8), path=tmp_path / "shared.onnx", opset=18)
    assert onnx_export._REGISTRIES and path.is_file()  # the table was kept
    monkeypatch.setattr(onnx_export, "_torchlib_registry_once", contextlib.nullcontext)
    own = export_onnx(model, sample=torch.zeros(2, 1, 8, 8), path=tmp_path / "own.onnx", opset=18)
    assert shared.read_bytes() == own.read_bytes()
    # restored after our export: a user's own export builds its own table (that is not built here: 1 s)
    assert "from_torchlib" in vars(_registration.ONNXRegistry)
    assert vars(_registration.ONNXRegistry)["from_torchlib"].__func__.__qualname__ == "ONNXRegistry.from_torchlib"


def test_fp16_keeps_float32_io_and_accuracy(resnet_onnx, digits):
    _, path, folder = resnet_onnx
    fp16 = convert_fp16(path, folder / "fp16.onnx")
    proto = onnx.load(str(fp16))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    x = digits.test.images.numpy()
    a = run_batched(create_session(path), x)
    b = run_batched(create_session(fp16), x)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.99


def test_int8_is_qdq_and_tracks_fp32(resnet_onnx, digits):
    # Plain PTQ promises a QDQ graph with int8 weights that mostly agrees with FP32; holding an
    # accuracy budget is the fallback's job (test_fallback_keeps_sensitive_nodes_in_float).
    _, path, folder = resnet_onnx
    prepared = preprocess(path, folder / "prepared.onnx")  # as the quantize stage does
    calib = digits.train.images[:256].numpy().astype(np.float32) / 255.0
    out = quantize_int8(prepared, folder / "int8.onnx", calibration_images=calib, settings=Int8Settings())
    qdq = count_qdq(out)
    assert qdq["QuantizeLinear"] > 0 and qdq["DequantizeLinear"] > 0
    x, y = digits.test.images.numpy(), digits.test.labels.numpy()
    fp32_logits, int8_logits = run_batched(create_session(path), x), run_batched(create_session(out), x)
    assert (fp32_logits.argmax(1) == int8_logits.argmax(1)).mean() >= 0.95
    assert ((fp32_logits.argmax(1) == y).mean() - (int8_logits.argmax(1) == y).mean()) * 100 <= 3.0
    weights = [i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights  # weights stored as int8


def test_all_operators_leaves_no_float_operator_between_integer_kernels(resnet_onnx, digits):
    # operators: all quantizes the residual sums too: ONNX Runtime's optimised graph then runs
    # QLinearAdd where the weighted model dequantizes to add in float and quantizes again.
    _, path, folder = resnet_onnx
    prepared = preprocess(path, folder / "prepared.onnx")
    calib = digits.train.images[:256].numpy().astype(np.float32) / 255.0

    def optimised_ops(operators: str) -> list[str]:
        out = quantize_int8(prepared, folder / f"int8_{operators}.onnx", calibration_images=calib,
                            settings=Int8Settings(operators=operators))
        optimised = folder / f"int8_{operators}_optimised.onnx"
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(optimised)).graph.node]

    weighted, every = optimised_ops("weighted"), optimised_ops("all")
    assert "Add" in weighted and "Add" not in every and every.count("QLinearAdd") == 3  # resnet8: 3 residual sums
    assert every.count("DequantizeLinear") < weighted.count("DequantizeLinear")


def test_fallback_keeps_sensitive_nodes_in_float(outlier_model, digits, tmp_path):
    _, path = outlier_model
    calib = digits.train.images[:128].numpy().astype(np.float32) / 255.0
    x, y = digits.test.images.numpy(), digits.test.labels.numpy()
    report = quantize_with_fallback(path, tmp_path / "int8.onnx", calibration_images=calib, val_images_u8=x,
                                    val_labels=y, settings=Int8Settings(per_channel=False), budget=0.5)
    assert report.fp32_top1 > 80
    first = report.attempts[0]["top1"]
    assert report.fp32_top1 - first > 0.5  # plain INT8 broke the budget...
    assert report.kept_float and report.drop <= 0.5  # ...the fallback restored it
    assert set(report.sensitivity) >= set(report.kept_float)
    with pytest.raises(ExportError, match="loses"):
        quantize_with_fallback(path, tmp_path / "int8b.onnx", calibration_images=calib, val_images_u8=x,
                               val_labels=y, settings=Int8Settings(per_channel=False), budget=0.5, fallback=False)


def test_latency_statistics():
    stats = summarize(list(range(1, 101)), batch=4)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["runs"] == 100
    assert stats["throughput_ips"] == pytest.approx(4 * 1000 / 50.5)
    calls = []
    result = measure(lambda: calls.append(1), batch=1, warmup=5, runs=100)
    assert len(calls) == 105 and result["runs"] == 100 and result["p50_ms"] >= 0
    with pytest.raises(ValueError):
        measure(lambda: None, batch=1, runs=0)


def test_tensorrt_missing_is_a_clear_backend_error():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from exports.tensorrt import require_tensorrt

        with pytest.raises(BackendUnavailable, match=r"pip install 'cskd-pipeline\[trt\]'"):
            require_tensorrt()
    else:
        pytest.skip("TensorRT is installed here; the GPU test below covers it")


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnx(resnet_onnx, digits, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs NVIDIA's index and a GPU)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from exports.tensorrt import EngineSpec, TrtRunner, build_engine

    _, path, _ = resnet_onnx
    from foundation.files import sha256_file

    digest = sha256_file(path)
    meta = build_engine(path, tmp_path / "m.engine", onnx_sha256=digest, spec=EngineSpec(1, 64, 512),
                        timing_cache=tmp_path / "tc")
    assert meta["onnx_sha256"] and (tmp_path / "tc").is_file()
    runner = TrtRunner(tmp_path / "m.engine", onnx_sha256=digest)
    x = torch.from_numpy(digits.test.images.numpy()).cuda().float() / 255.0
    trt_logits = runner(x).cpu().numpy()
    onnx_logits = run_batched(create_session(path), digits.test.images.numpy())
    assert (trt_logits.argmax(1) == onnx_logits.argmax(1)).mean() > 0.999
