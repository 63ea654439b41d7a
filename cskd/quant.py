"""Simulated INT8 for quantization-aware distillation (QAD), matching ONNX Runtime's QDQ export.

ONNX Runtime's static quantizer (``exports.quantize``) puts a QuantizeLinear /
DequantizeLinear pair on the input and the output activation of every Conv, Gemm
and MatMul (one scale and zero point per tensor, from its calibration; every
consumer of the tensor, a residual Add too, reads the quantized value), quantizes their
weights per output channel, symmetric int8 in [-127, 127] (scale = max|w| / 127;
[-64, 64] with ``reduce_range``), and their bias (for Gemm) to int32 with scale = activation scale x
weight scale. BatchNorm is folded into the convolutions before any of that (``quant_pre_process``).
With ``operators: all`` it also quantizes the output of every Add (a residual sum),
folding a following Relu into the uint8 range.

``QuantSim`` does the same in PyTorch: the network with BatchNorm folded
(``torch.fx``), each Conv2d and Linear fake-quantizing its input with the
activation parameters ONNX Runtime chose (and each Add its output, where the QDQ
model does), and its weight and bias with the rule above, recomputed from the
current weights at every step. Gradients pass through the rounding (``torch.fake_quantize_*``: the
straight-through estimator, zero
outside the clipping range). The activation parameters are not learned: they are
read from ONNX Runtime's own calibration of the current weights (``set_activations``),
so the model trained is the model the exporter makes.
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127]
REDUCED_WEIGHT_QMAX = 64  # with reduce_range: [-64, 64]
_ADDS = (operator.add, operator.iadd, torch.add)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """The model with every BatchNorm that follows a convolution folded into it (a copy, in eval
    mode)."""
    import copy

    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow
        raise ValueError(
            f"QAD needs a network torch.fx can trace ({type(exc).__name__}: {exc})"
        ) from None


def _fake_weight(
    weight: torch.Tensor, qmax: int = WEIGHT_QMAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric fake quantization to [-qmax, qmax]; returns (weights, their
    scales)."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax)).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax), scale


class ActQuant(nn.Module):
    """Per-tensor fake quantization of one activation, with the scale and zero point the QDQ model
    gives that tensor; off where the model leaves the tensor in float."""

    def __init__(self, *, activation_type: str):
        super().__init__()
        self.qmin, self.qmax = (0, 255) if activation_type == "uint8" else (-128, 127)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("enabled", torch.tensor(False))

    def set(self, params: dict | None) -> None:
        self.enabled.fill_(params is not None)
        if params is not None:
            self.scale.fill_(params["scale"])
            self.zero_point.fill_(params["zero_point"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return x
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.qmin, self.qmax
        )


class QuantLayer(nn.Module):
    """A Conv2d or Linear whose weight (and bias, where the QDQ model quantizes it) is quantized
    as ONNX Runtime does; its input and output are quantized by ``ActQuant`` nodes around it."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, *, reduce_range: bool = False):
        super().__init__()
        self.layer = layer
        self.weight_qmax = REDUCED_WEIGHT_QMAX if reduce_range else WEIGHT_QMAX
        # False: the exporter left this layer in float
        self.register_buffer("quantized", torch.tensor(False))
        self.register_buffer("bias_int32", torch.tensor(False))
        # simulate() sets the quantizer of the input tensor: referenced, not registered (its buffers
        # belong to the graph module, and a checkpoint must hold them once).
        self.__dict__["input_quant"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not bool(self.quantized):
            return layer(x)
        weight, w_scale = _fake_weight(layer.weight, self.weight_qmax)
        bias = layer.bias
        # int32, scale = input scale x weight scale; straight-through
        if bias is not None and bool(self.bias_int32):
            step = (self.input_quant.scale * w_scale).detach()
            bias = bias + (torch.round(bias / step) * step - bias).detach()
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(
                x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        return F.linear(x, weight, bias)


def simulate(
    model: nn.Module, *, activation_type: str, reduce_range: bool = False
) -> torch.fx.GraphModule:
    """``QuantSim`` of ``model``: BatchNorm folded; every Conv2d and Linear a ``QuantLayer``; an
    ``ActQuant`` after each tensor such a layer reads or writes, so every consumer of the tensor
    (a residual Add too) sees it quantized, as in the QDQ graph. Everything is off until
    ``set_activations``."""
    gm = fold_batchnorm(model)
    modules = dict(gm.named_modules())
    layers = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d | nn.Linear)
    ]
    quantizers: dict[torch.fx.Node, str] = {}

    def quantize_after(node: torch.fx.Node) -> str:
        # already a quantized tensor
        if node.op == "call_module" and node.target in quantizers.values():
            return node.target
        if node not in quantizers:
            name = f"act_quant_{len(quantizers)}"
            gm.add_submodule(name, ActQuant(activation_type=activation_type))
            with gm.graph.inserting_after(node):
                quant = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(quant, delete_user_cb=lambda user: user is not quant)
            quantizers[node] = name
        return quantizers[node]

    # Residual sums: quantized only where the QDQ model quantizes them (``operators: all``); matched
    # to the QDQ model's Add nodes by their order, which tracing and export both keep.
    adds = [
        n
        for n in gm.graph.nodes
        if (n.op == "call_function" and n.target in _ADDS)
        or (n.op == "call_method" and n.target in ("add", "add_"))
    ]
    add_quantizers = []
    for node in adds:
        name = f"add_quant_{len(add_quantizers)}"
        gm.add_submodule(name, ActQuant(activation_type=activation_type))
        with gm.graph.inserting_after(node):
            quant = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(
            quant, delete_user_cb=lambda user, quant=quant: user is not quant
        )
        add_quantizers.append(name)
    slots = {}
    for node in layers:
        layer = QuantLayer(modules[node.target], reduce_range=reduce_range)
        _set(gm, node.target, layer)
        source = node.args[0]
        slots[node.target] = (quantize_after(source), quantize_after(node))
        layer.__dict__["input_quant"] = gm.get_submodule(slots[node.target][0])
    gm.recompile()
    gm.qad_slots = slots  # layer name -> (input quantizer, output quantizer)
    gm.qad_adds = add_quantizers  # one quantizer per Add, in graph order
    return gm


def _set(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def set_activations(
    sim: torch.fx.GraphModule, params: dict[str, dict | None], adds: list[dict | None] = ()
) -> None:
    """The QDQ model's parameters, by layer (``exports.quantize.activation_params``): each layer's
    input and output ``scale``/``zero_point`` and ``bias_int32``; a layer missing or None stays in
    float. ``adds`` (``exports.quantize.add_outputs``): the quantization of each Add's output, in
    order."""
    unknown = sorted(set(params) - set(sim.qad_slots))
    if unknown:
        raise ValueError(f"the QDQ model quantizes {unknown[0]!r}, which the network does not have")
    if any(adds) and len(adds) != len(sim.qad_adds):
        raise ValueError(
            f"the QDQ model has {len(adds)} Add nodes and the network {len(sim.qad_adds)}: "
            f"their quantization cannot be matched"
        )
    for quantizer in (m for m in sim.modules() if isinstance(m, ActQuant)):
        quantizer.set(None)
    for name, (input_quant, output_quant) in sim.qad_slots.items():
        value = params.get(name)
        layer = sim.get_submodule(name)
        layer.quantized.fill_(value is not None)
        if value is not None:
            layer.bias_int32.fill_(value["bias_int32"])
            sim.get_submodule(input_quant).set(value["input"])
            if value["output"] is not None:
                sim.get_submodule(output_quant).set(value["output"])
    for name, value in zip(sim.qad_adds, adds, strict=False):
        if value is not None:
            sim.get_submodule(name).set(value)


def float_model(sim: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The folded float network with the trained weights, without the quantizers: what is
    exported (its layers keep their names, which is how the QDQ model's nodes are matched)."""
    import copy

    out = copy.deepcopy(sim)
    for node in list(out.graph.nodes):
        if node.op == "call_module" and isinstance(out.get_submodule(node.target), ActQuant):
            node.replace_all_uses_with(node.args[0])
            out.graph.erase_node(node)
    for name in sim.qad_slots:
        _set(out, name, out.get_submodule(name).layer)
    out.graph.lint()
    out.recompile()
    out.delete_all_unused_submodules()
    return out
