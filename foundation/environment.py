"""The software and hardware an artifact was made with (recorded in every artifact), and whether
a process of this machine is alive."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from functools import lru_cache


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
        "tensorrt": package_version("tensorrt"),
        "openvino": package_version("openvino"),
        "cskd_pipeline": package_version("cskd-pipeline"),
    }


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine with that id is alive (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
