"""Deployment back-ends: ONNX export, ONNX Runtime, INT8 quantization, TensorRT, latency.

Nothing here imports from ``pipeline``, ``stages`` or ``cskd``. Heavy optional
back-ends (tensorrt, onnxruntime-gpu) are imported inside the functions that use them.
"""
