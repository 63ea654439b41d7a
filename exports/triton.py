"""A Triton Inference Server model repository from a shipped bundle.

One Triton model per exported target, named ``<name>_<target>`` (``-`` becomes ``_``): the ONNX
files under ONNX Runtime (``platform: "onnxruntime_onnx"``), a TensorRT engine as
``tensorrt_plan``, an OpenVINO IR under the ``openvino`` backend. Each has a ``config.pbtxt``
(batch size, dynamic batching, the input and output names, types and dims, an instance group)
and the class names as its output's label file, so Triton's classification extension returns
labels. The file format decides the Triton platform; the bundle's model card gives the tensors.

Triton itself is not run here: the configs are checked by parsing them with the ``ModelConfig``
protobuf that ``tritonclient`` ships (tests/exports/test_triton.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# file suffix(es) -> (the config line naming the runtime, the file names Triton expects in
# <model>/1/)
_FORMATS = {
    (".onnx",): ('platform: "onnxruntime_onnx"', ("model.onnx",)),
    (".engine",): ('platform: "tensorrt_plan"', ("model.plan",)),
    (".bin", ".xml"): ('backend: "openvino"', ("model.bin", "model.xml")),
}
_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
}
LABELS = "labels.txt"


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 256
    preferred: tuple[int, ...] = (64,)
    queue_delay_us: int = 2000
    instances: int = 1


def model_name(name: str, target: str) -> str:
    return f"{name}_{target}".replace("-", "_")


def _format(files: list[Path]) -> tuple[str, dict[Path, str]]:
    """The runtime line and where each file goes, from the files' suffixes."""
    ordered = sorted(files, key=lambda f: f.suffix)
    suffixes = tuple(f.suffix for f in ordered)
    if suffixes not in _FORMATS:
        raise ValueError(f"no Triton format for files {', '.join(f.name for f in files)}")
    runtime, names = _FORMATS[suffixes]
    return runtime, dict(zip(ordered, names, strict=True))


def config_text(name: str, runtime: str, card: dict, batching: Batching, *, gpu: bool) -> str:
    """The config.pbtxt of one model, in protobuf text format."""
    tensor_in, tensor_out = card["input"], card["output"]
    dims_in = ", ".join(str(d) for d in tensor_in["shape"][1:])
    dims_out = ", ".join(str(d) for d in tensor_out["shape"][1:])
    preferred = ", ".join(str(b) for b in batching.preferred if b <= batching.max_batch_size)
    return "\n".join(
        [
            f'name: "{name}"',
            runtime,
            f"max_batch_size: {batching.max_batch_size}",
            "input [",
            f'  {{ name: "{tensor_in["name"]}" data_type: {_DTYPES[tensor_in["dtype"]]} dims: [ '
            f'{dims_in} ] }}',
            "]",
            "output [",
            f'  {{ name: "{tensor_out["name"]}" data_type: TYPE_FP32 dims: [ {dims_out} ] '
            f'label_filename: "{LABELS}" }}',
            "]",
            "dynamic_batching {",
            *([f"  preferred_batch_size: [ {preferred} ]"] if preferred else []),
            f"  max_queue_delay_microseconds: {batching.queue_delay_us}",
            "}",
            f"instance_group [ {{ count: {batching.instances} kind: "
            f"{'KIND_GPU' if gpu else 'KIND_CPU'} }} ]",
            "",
        ]
    )


def check_repository_folder(out: Path) -> None:
    """A repository folder is new or empty: the pipeline never writes into a folder of someone
    else's."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise FileExistsError(
            f"{out}: exists and is not an empty folder; give a new --out for the Triton repository"
        )


def write_repository(
    bundle: Path,
    out: Path,
    models: dict[str, list[str]],
    *,
    name: str,
    batching: Batching = Batching(),
    gpu_targets: frozenset[str] = frozenset(),
) -> list[Path]:
    """Write ``out/<name>_<target>/`` for each ``target: [bundle file names]`` of ``models``, from
    the bundle folder; returns the config files written. ``out`` must be new or empty; it is written
    beside itself (a temporary folder of its own) and renamed into place, so a failure leaves
    nothing half-written and nothing else is touched."""
    check_repository_folder(out)
    card = json.loads((bundle / "model_card.json").read_text())
    labels = "\n".join(card["class_names"]) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    # ours alone: removed on failure
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = _fill(
            tmp,
            out,
            bundle,
            models,
            card,
            labels,
            name=name,
            batching=batching,
            gpu_targets=gpu_targets,
        )
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _fill(
    tmp: Path,
    out: Path,
    bundle: Path,
    models: dict[str, list[str]],
    card: dict,
    labels: str,
    *,
    name: str,
    batching: Batching,
    gpu_targets: frozenset[str],
) -> list[Path]:
    written = []
    for target, names in models.items():
        runtime, files = _format([bundle / n for n in names])
        folder = tmp / model_name(name, target)
        (folder / "1").mkdir(parents=True)
        for source, inside in files.items():
            shutil.copyfile(source, folder / "1" / inside)
        (folder / LABELS).write_text(labels)
        (folder / "config.pbtxt").write_text(
            config_text(
                model_name(name, target), runtime, card, batching, gpu=target in gpu_targets
            )
        )
        written.append(out / folder.name / "config.pbtxt")
    return written
