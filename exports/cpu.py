"""Which class of x86 CPU this is, for INT8: the class decides what ONNX Runtime's integer
kernels compute.

- ``vnni``: AVX-512 VNNI, AVX-VNNI or AMX. uint8 x int8 products are summed straight into 32-bit
  integers (``vpdpbusd``): the kernels compute exactly what the QDQ graph says.
- ``avx2``: no VNNI. Pairs of uint8 x int8 products are summed into 16-bit integers first
  (``vpmaddubsw``), which saturate with 8-bit weights: the INT8 model predicts differently from
  its own QDQ graph, and differently from a VNNI CPU. 7-bit weights (``reduce_range``) cannot
  saturate, so the kernels are exact again.
- ``any``: nothing is assumed (another architecture, or a model meant for every x86 CPU).
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

CPU_CLASSES = ("vnni", "avx2", "any")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
RECORDED_FLAGS = ("avx2", "avx512f", *VNNI_FLAGS)


@cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (Linux ``/proc/cpuinfo``; empty
    elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    line = next((line for line in text.splitlines() if line.startswith("flags")), "flags:")
    return frozenset(line.split(":", 1)[1].split())


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else the platform's word for it):
    two CPUs of one class (an Intel and an AMD with AVX-512 VNNI) still train to other float
    results."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    line = next((line for line in text.splitlines() if line.startswith("model name")), None)
    return line.split(":", 1)[1].strip() if line else (platform.processor() or platform.machine())


def recorded_flags() -> dict[str, bool]:
    """The flags that decide INT8 speed and results, as recorded beside every CPU figure."""
    flags = cpu_flags()
    return {f: f in flags for f in RECORDED_FLAGS}


def machine_class() -> str:
    """This machine's class: ``vnni``, ``avx2`` or ``any``."""
    flags = cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "any"
    if flags.intersection(VNNI_FLAGS):
        return "vnni"
    return "avx2" if "avx2" in flags else "any"


def kernels_exact(cpu_class: str, *, reduce_range: bool) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels on a CPU of ``cpu_class`` compute the QDQ graph
    exactly (no 16-bit saturation): on VNNI always, elsewhere only with 7-bit weights."""
    return reduce_range or cpu_class == "vnni"
