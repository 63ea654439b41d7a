"""FP16 ONNX: weights and compute in float16, inputs and outputs kept float32.

Keeping the I/O in float32 means callers feed the same tensors as for the FP32
model; Cast nodes at the edges do the conversion inside the graph.
"""

from __future__ import annotations

from pathlib import Path


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    import onnx
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    # The converter appends its input Casts at the end of the node list; ONNX requires
    # topological order, so sort the graph before checking it.
    graph = ir.from_proto(model)
    graph.graph.sort()
    model = ir.to_proto(graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_path))
    return out_path
