"""Serving a shipped bundle: one model runner and one protocol codec, shared by every engine.

The runner loads one exported file of a bundle (ONNX Runtime for the ONNX files, OpenVINO for
the IR) and maps a float32 batch to logits. The codec speaks the Open Inference Protocol v2
(KServe v2, what Triton, KServe and MLServer speak: JSON tensors in, JSON tensors out) and
``/v1/classify`` (image bytes in, label and probabilities out, decoded by the pipeline's own
decoder, ``cskd.data.decode``: the server runs no code the bundle carries). Every answer names
the version served. An engine (``engines.py``) only adapts these to its server and its dynamic
batching, so engines cannot drift apart.

A bad request raises ``BadRequest`` with a message; engines answer it with HTTP 400. Bodies are
parsed strictly: NaN, infinities (``1e400``) and JSON nested past the parser's recursion limit
are bad requests, and so is a non-finite value in a tensor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
# The binary tensor extension: the body is a JSON header of this many bytes, then the tensors' bytes
BINARY_HEADER = "inference-header-content-length"
# where an engine that can only pass JSON to its workers (LitServe) carries the binary part, base64
BINARY_KEY = "binary_data_b64"
_VERSION_FOLDER = re.compile(r"^v(\d+)$")


def _reject_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a number this model takes: send finite values")


def parse_json(raw: bytes) -> object:
    """A request body as JSON, strictly: BadRequest for NaN and Infinity, or nesting deeper than the
    parser's recursion limit (json's C scanner stops there; an infer request nests 4 deep). A
    number too large for FP32 (``1e400``) parses, and ``decode_infer`` refuses the tensor."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("the body nests too deeply to be an infer request (it needs 4 levels)") from None
    except ValueError as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"the body is not JSON: {exc}") from None


class BadRequest(ValueError):
    """A request the model cannot answer: wrong shape, wrong type, an undecodable image."""


@dataclass(frozen=True)
class Bundle:
    """A shipped bundle folder: its model card and, for each target, its files."""

    folder: Path
    card: dict
    version: str  # what OIP answers name: N of a folder vN, else the first 12 hex of its SHA256SUMS

    @classmethod
    def open(cls, folder: Path) -> Bundle:
        card_path = folder / "model_card.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{folder}: not a bundle (no model_card.json); give a shipped version folder "
                                    f"such as shipped/<name>/latest")
        match = _VERSION_FOLDER.match(Path(folder).resolve().name)
        sums = Path(folder) / "SHA256SUMS"
        version = match.group(1) if match else (
            hashlib.sha256(sums.read_bytes()).hexdigest()[:12] if sums.is_file() else "unsealed")
        return cls(folder, json.loads(card_path.read_text()), version)

    @property
    def name(self) -> str:
        return self.card["name"]

    def fastest_target(self) -> str:
        """The report's fastest file within its accuracy budget at its largest batch size, else onnx."""
        report = self.folder / "report.json"
        fastest = (json.loads(report.read_text()).get("fastest") or {}) if report.is_file() else {}
        return fastest[max(fastest, key=int)]["backend"] if fastest else "onnx"


def note_replica() -> None:
    """Test hook: with CSKD_SERVE_REPLICA_PIDS set to a folder, a replica leaves its process id
    there when it is set up (the replica-kill tests find the process to kill this way)."""
    folder = os.environ.get("CSKD_SERVE_REPLICA_PIDS")
    if folder:
        (Path(folder) / str(os.getpid())).touch()


class Runner:
    """One exported file of the bundle: ``__call__(float32 [N, C, H, W]) -> float32 logits [N, K]``."""

    def __init__(self, bundle: Bundle, files: list[str], *, threads: int | None = None):
        model = next(bundle.folder / f for f in files if f.endswith((".onnx", ".xml")))
        if model.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            # idle compute threads sleep instead of spinning: a server shares its cores with the HTTP
            # side (and here with the load generator), which spinning threads would starve
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})[0]
        else:
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
            compiled = ov.Core().compile_model(str(model), "CPU", config)
            self._run = lambda x: compiled(x)[compiled.output(0)]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)


class Codec:
    """The Open Inference Protocol v2 and /v1/classify for one bundle."""

    def __init__(self, bundle: Bundle, model_name: str):
        self.bundle, self.model_name = bundle, model_name
        spec = bundle.card["input"]
        self.input_name, self.sample_shape = spec["name"], tuple(spec["shape"][1:])
        self.output_name = bundle.card["output"]["name"]
        self.classes = bundle.card["class_names"]
        self.version = bundle.version

    def metadata(self, platform: str) -> dict:
        return {"name": self.model_name, "versions": [self.version], "platform": platform,
                "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.sample_shape]}],
                "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, len(self.classes)]}],
                "parameters": {"class_names": self.classes}}

    @staticmethod
    def split_binary(raw: bytes, header_length: str | None) -> tuple[object, bytes]:
        """A request body as its JSON part and its binary part (empty without the extension)."""
        if header_length is None:
            return parse_json(raw), b""
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{BINARY_HEADER}: {header_length!r} is not a number of bytes") from None
        if not 0 < length <= len(raw):
            raise BadRequest(f"{BINARY_HEADER}: {length} is not within the body's {len(raw)} bytes")
        return parse_json(raw[:length]), raw[length:]

    def decode_infer(self, body: object, binary: bytes = b"") -> tuple[str | None, np.ndarray]:
        """An OIP v2 infer request (JSON tensors, or the binary tensor extension's bytes) as its id and
        a float32 batch; BadRequest if malformed."""
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
            raise BadRequest(f"an infer request is {{\"inputs\": [one tensor named {self.input_name!r}]}}")
        tensor = body["inputs"][0]
        if not isinstance(tensor, dict) or tensor.get("name") != self.input_name:
            raise BadRequest(f"the input tensor is named {self.input_name!r}")
        dtype = _DATATYPES.get(tensor.get("datatype"))
        if dtype is None:
            raise BadRequest(f"datatype {tensor.get('datatype')!r}: this model takes FP32 (FP16 and FP64 are converted)")
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and len(shape) == 1 + len(self.sample_shape)
                and tuple(shape[1:]) == self.sample_shape and isinstance(shape[0], int) and shape[0] >= 1):
            raise BadRequest(f"shape {shape}: this model takes [N, {', '.join(map(str, self.sample_shape))}]")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = self._binary(body, binary, dtype, shape, size)
        else:
            try:
                with np.errstate(over="ignore"):  # a value past FP32's range becomes inf: refused below
                    data = np.asarray(tensor.get("data"), dtype=dtype).reshape(shape).astype(np.float32)
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"data does not fill shape {shape} with numbers ({exc})") from None
        if not np.isfinite(data).all():
            raise BadRequest(f"{int((~np.isfinite(data)).sum())} values are NaN or infinite (in FP32): send finite "
                             f"values")
        return body.get("id"), data

    @staticmethod
    def _binary(body: dict, binary: bytes, dtype, shape: list[int], size: object) -> np.ndarray:
        if not binary and BINARY_KEY in body:
            binary = base64.b64decode(body[BINARY_KEY])
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size != expected or len(binary) != expected:
            raise BadRequest(f"binary_data_size {size} with {len(binary)} bytes sent: shape {shape} of "
                             f"{np.dtype(dtype).name} is {expected} bytes")
        with np.errstate(over="ignore"):
            return np.frombuffer(binary, dtype=dtype).reshape(shape).astype(np.float32)

    def encode_infer(self, request_id: str | None, logits: np.ndarray) -> dict:
        finite = np.isfinite(logits)
        # JSON has no NaN: a non-finite logit (a broken model, not a bad request) is sent as null and counted
        data = logits.ravel().tolist() if finite.all() else [v if ok else None for v, ok in
                                                            zip(logits.ravel().tolist(), finite.ravel(), strict=True)]
        output = {"name": self.output_name, "datatype": "FP32", "shape": list(logits.shape), "data": data}
        if not finite.all():
            output["parameters"] = {"non_finite": int((~finite).sum())}
        out = {"model_name": self.model_name, "model_version": self.version, "outputs": [output]}
        return {**out, "id": request_id} if request_id is not None else out

    def decode_image(self, data: bytes) -> np.ndarray:
        """Image bytes as one float32 sample in [0, 1] at the model's size, by the pipeline's own
        decoder (the rules predict.py copies); BadRequest if unreadable or over the pixel limit."""
        from PIL import Image

        from cskd.data.decode import decode_image
        from cskd.errors import DataError

        channels, height, width = self.sample_shape
        try:
            chw = decode_image(data, channels=channels, where="the upload").numpy()
        except DataError as exc:
            raise BadRequest(str(exc).replace("; remove or replace it", "").replace(
                "remove it, or raise data.max_image_pixels", "send a smaller image")) from None
        if chw.shape[1:] != (height, width):  # as predict.py resizes: bilinear, on the uint8 image
            hwc = chw[0] if channels == 1 else chw.transpose(1, 2, 0)
            resized = np.asarray(Image.fromarray(hwc).resize((width, height), Image.BILINEAR))
            chw = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
        return chw.astype(np.float32) / 255.0

    def encode_classification(self, logits: np.ndarray) -> dict:
        if not np.isfinite(logits).all():
            return {"label": None, "index": None, "probability": None, "probabilities": None,
                    "model_version": self.version, "error": "the model gave non-finite logits for this image"}
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        best = int(probabilities.argmax())
        return {"label": self.classes[best], "index": best, "probability": float(probabilities[best]),
                "model_version": self.version,
                "probabilities": {c: float(p) for c, p in zip(self.classes, probabilities, strict=True)}}
