"""TensorRT engines from ONNX, written against TensorRT 10.12+/11's Python API.

TensorRT 11 networks are strongly typed: precision comes from the ONNX graph
(an FP16 graph builds an FP16 engine, a QDQ graph an INT8 one), so there are no
precision builder flags and no calibrator here. An engine is only valid for the
ONNX file, the TensorRT version and the GPU it was built with; all three are
recorded beside it and checked on load.

TensorRT cannot be installed on this project's development machines; its tests
are marked ``tensorrt`` and run where TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exports.errors import BackendUnavailable, ExportError

INSTALL_HINT = (
    "pip install 'cskd-pipeline[trt]' on a machine with an NVIDIA GPU (TensorRT 10.12 or newer)"
)


def require_tensorrt():
    """Import tensorrt and check for a CUDA device, or raise ``BackendUnavailable`` saying what
    is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            f"TensorRT is not installed (no module 'tensorrt'); {INSTALL_HINT}"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "TensorRT needs an NVIDIA GPU with CUDA, and none is visible to this process"
        )
    return trt


@dataclass(frozen=True)
class EngineSpec:
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256
    workspace_mib: int = 1024


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    onnx_sha256: str,
    spec: EngineSpec,
    timing_cache: Path | None = None,
) -> dict:
    """Build and serialize an engine; returns (and writes beside it) the binding metadata.

    ``onnx_sha256`` is the source model's digest (the caller has it), recorded so that an
    engine is refused later if its ONNX file changed."""
    import torch

    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED: accepted by 10.12+, and the only mode on 11 (where it is ignored).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT could not parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(
            tensor.name, (spec.min_batch, *rest), (spec.opt_batch, *rest), (spec.max_batch, *rest)
        )
    config.add_optimization_profile(profile)
    cache_bytes = (
        timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "spec": spec.__dict__,
    }
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class TrtRunner:
    """Runs a deserialized engine on torch CUDA tensors (no pycuda)."""

    def __init__(self, engine_path: Path, *, onnx_sha256: str):
        import torch

        trt = require_tensorrt()
        meta = json.loads(engine_path.with_suffix(".json").read_text())
        expected = {
            "onnx_sha256": onnx_sha256,
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(0),
        }
        stale = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if stale:
            raise ExportError(
                f"{engine_path}: engine is stale "
                f"({', '.join(f'{k}: built {a}, now {b}' for k, (a, b) in stale.items())}); "
                "rebuild it"
            )
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.output = next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )

    def __call__(self, images):
        """``images`` float32 CUDA tensor ``[B, C, H, W]`` in [0, 1] -> logits ``[B, classes]``
        (CUDA)."""
        import torch

        images = images.contiguous()
        self.context.set_input_shape(self.input, tuple(images.shape))
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output)),
            device=images.device,
            dtype=torch.float32,
        )
        self.context.set_tensor_address(self.input, images.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise ExportError("TensorRT execution failed")
        return out
