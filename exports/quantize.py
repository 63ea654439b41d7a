"""INT8 post-training quantization with ONNX Runtime (static, QDQ format); the accuracy-targeted
fallback that keeps the most sensitive nodes in float is in int8_fallback.py.

QDQ is the explicit-quantization format TensorRT consumes. Weights are int8
per channel; activations uint8 (fast on x86 CPUs, whose VNNI kernels are U8S8)
or int8 (symmetric, what TensorRT needs). Calibration images must come from the
training split; the caller passes them in.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from exports.ort_runtime import create_session, run_batched

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")


class Int8Settings(BaseModel):
    """How ONNX Runtime quantizes a model, resolved: the one INT8 settings type from the manifest
    (``export.int8``, resolved by ``stagekit.int8_settings.int8_settings``) through the QAD and
    quantize stages' ids to ``quantize_int8``. Its fields are what both stages' artifacts depend
    on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ONNX Runtime's calibration method
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    images: int = 512  # training images calibrated on (the caller draws them; recorded for the ids)
    activation_type: Literal["uint8", "int8"] = "uint8"
    per_channel: bool = True
    # 7-bit weights in [-64, 64]: no U8S8 saturation on CPUs without VNNI
    reduce_range: bool = False
    # weighted: Conv, Gemm and MatMul only (the float operators between them run on dequantized
    # tensors); all: every operator ONNX Runtime can quantize (Add, Relu, pooling, reshapes), so
    # the integer kernels run back to back
    operators: Literal["weighted", "all"] = "weighted"


class _Batches:
    """An ONNX Runtime CalibrationDataReader over a float32 array ``[N, C, H, W]``."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 64):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self.rewind()

    def get_next(self):
        if self._pos >= len(self.images):
            return None
        batch = self.images[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def rewind(self):
        self._pos = 0


def _make_reader(images: np.ndarray, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Batches, CalibrationDataReader):
        pass

    return Reader(images, input_name)


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantizable_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZABLE_OPS]


def count_qdq(path: Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
    }


@contextlib.contextmanager
def _root_logger_quiet():
    """ONNX Runtime's quantizer warns on the root logger for every rank-1 weight it cannot quantize
    per
    channel (BatchNorm's, left in float anyway): lines a run should not print, nor a user's
    logging see."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    float_path: Path,
    out_path: Path,
    *,
    calibration_images: np.ndarray,
    settings: Int8Settings,
    exclude: list[str] | tuple[str, ...] = (),
    cache_path: Path | None = None,
    pinned: dict[str, dict] | None = None,
) -> Path:
    """Static QDQ quantization of ``float_path`` (already pre-processed if wanted).

    ``calibration_images`` float32 ``[N, C, H, W]`` in the model's input range.
    ``cache_path`` keeps the calibration ranges so repeated calls skip recalibrating.
    ``pinned``: tensor name -> ``{scale, zero_point}`` used instead of calibrating those tensors
    (the ranges a quantization-aware training used).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.method]
    activation = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    input_name = create_session(float_path).get_inputs()[0].name
    with _root_logger_quiet():
        quantize_static(
            str(float_path),
            str(out_path),
            _make_reader(calibration_images.astype(np.float32), input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=list(exclude),
            reduce_range=settings.reduce_range,
            op_types_to_quantize=list(QUANTIZABLE_OPS)
            if settings.operators == "weighted"
            else None,
            # Symmetric activations for int8 (TensorRT's convention); calibration with the whole
            # batch.
            extra_options={
                "ActivationSymmetric": settings.activation_type == "int8",
                "WeightSymmetric": True,
                "TensorQuantOverrides": _overrides(pinned or {}, settings),
            },
            calibration_cache_path=str(cache_path) if cache_path else None,
        )
    return out_path


def _overrides(pinned: dict[str, dict], settings: Int8Settings) -> dict:
    zero_type = np.uint8 if settings.activation_type == "uint8" else np.int8
    return {
        name: [
            {
                "scale": np.array(p["scale"], dtype=np.float32),
                "zero_point": np.array(p["zero_point"], dtype=zero_type),
            }
        ]
        for name, p in pinned.items()
    }


def pinned_ranges(params: dict[str, dict | None], adds: list[dict | None] = ()) -> dict[str, dict]:
    """``activation_params``' and ``add_outputs``' ranges by tensor name: what
    ``quantize_int8(pinned=...)`` takes."""
    ranges = [
        value[side]
        for value in params.values()
        if value
        for side in ("input", "output")
        if value[side]
    ]
    return {
        r["tensor"]: {"scale": r["scale"], "zero_point": r["zero_point"]}
        for r in [*ranges, *adds]
        if r
    }


def runtime_agreement(path: Path, images_u8: np.ndarray, *, batch_size: int = 256) -> dict:
    """ONNX Runtime's optimised session (integer kernels) against the same QDQ graph run as written:
    largest logit difference and top-1 agreement. Below 100% agreement the INT8 model's
    predictions depend on the CPU (uint8 x int8 saturation without VNNI)."""
    fused = run_batched(create_session(path), images_u8, batch_size=batch_size)
    literal = run_batched(create_session(path, optimize=False), images_u8, batch_size=batch_size)
    return {
        "max_logit_diff": float(np.abs(fused - literal).max()),
        "top1_agreement": float((fused.argmax(1) == literal.argmax(1)).mean() * 100.0),
    }


def _graph(path: Path):
    """The graph's initializers as arrays, and each tensor's producer and consumers."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return graph, constants, producer, consumers


def _qparams(constants: dict, node, tensor: str) -> dict:
    """A QuantizeLinear or DequantizeLinear node's scale and zero point, for ``tensor``."""
    zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else np.array(0)
    return {"tensor": tensor, "scale": float(constants[node.input[1]]), "zero_point": int(zero)}


def add_outputs(path: Path) -> list[dict | None]:
    """For each Add of a QDQ model, in graph order: the quantization of its output (``tensor``,
    ``scale``, ``zero_point``), or None where the output stays float. With ``operators: all``
    ONNX Runtime quantizes residual sums (and, for uint8, folds the Relu after them into the
    range); a simulation must round them there too."""
    graph, constants, _, consumers = _graph(path)
    out: list[dict | None] = []
    for node in (n for n in graph.node if n.op_type == "Add"):
        quantize = next(
            (c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None
        )
        out.append(None if quantize is None else _qparams(constants, quantize, node.output[0]))
    return out


def activation_params(path: Path) -> dict[str, dict | None]:
    """What a QDQ model does around each Conv, Gemm and MatMul, keyed by the layer its weight
    belongs to (the initializer's name without ``.weight``): the ``input`` and ``output``
    activations' ``tensor`` name, ``scale`` and ``zero_point`` (None where not quantized) and
    whether the bias is quantized (``bias_int32``); None for a layer left in float. What a
    simulation of the model must reproduce."""
    graph, constants, producer, consumers = _graph(path)
    params: dict[str, dict | None] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        weight = producer.get(node.input[1])
        weight_name = (
            weight.input[0]
            if weight is not None and weight.op_type == "DequantizeLinear"
            else node.input[1]
        )
        layer = weight_name.removesuffix("_quantized").removesuffix(".weight")
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            params[layer] = None
            continue
        quantize_out = next(
            (c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None
        )
        bias = producer.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        quantize_in = producer.get(dq.input[0])  # the QuantizeLinear of the float tensor
        source = quantize_in.input[0] if quantize_in is not None else dq.input[0]
        # a graph output keeps its name: the quantizer renames the tensor before it
        output = node.output[0].removesuffix("_QuantizeLinear_Input")
        params[layer] = {
            "input": _qparams(constants, dq, source),
            "output": _qparams(constants, quantize_out, output)
            if quantize_out is not None
            else None,
            "bias_int32": bias is not None and bias.op_type == "DequantizeLinear",
        }
    return params
