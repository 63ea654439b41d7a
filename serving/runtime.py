"""Serving a shipped bundle: one model runner and one protocol codec, shared by every engine.

The runner loads one exported file of a bundle (ONNX Runtime for the ONNX files, OpenVINO for
the IR) and maps a float32 batch to logits. The codec speaks the Open Inference Protocol v2
(KServe v2, what Triton, KServe and MLServer speak: JSON tensors in, JSON tensors out) and
``/v1/classify`` (image bytes in, label and probabilities out, through the bundle's own
``predict.py`` preprocessing). An engine (``engines.py``) only adapts these to its
server and its dynamic batching, so engines cannot drift apart.

A bad request raises ``BadRequest`` with a message; engines answer it with HTTP 400.
"""

from __future__ import annotations

import base64
import importlib.util
import io
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


class BadRequest(ValueError):
    """A request the model cannot answer: wrong shape, wrong type, an undecodable image."""


@dataclass(frozen=True)
class Bundle:
    """A shipped bundle folder: its model card and, for each target, its files."""

    folder: Path
    card: dict

    @classmethod
    def open(cls, folder: Path) -> Bundle:
        card_path = folder / "model_card.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{folder}: not a bundle (no model_card.json); give a shipped version folder "
                                    f"such as shipped/<name>/latest")
        return cls(folder, json.loads(card_path.read_text()))

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
        self._preprocess = None

    def metadata(self, platform: str) -> dict:
        return {"name": self.model_name, "versions": ["1"], "platform": platform,
                "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.sample_shape]}],
                "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, len(self.classes)]}],
                "parameters": {"class_names": self.classes}}

    @staticmethod
    def split_binary(raw: bytes, header_length: str | None) -> tuple[object, bytes]:
        """A request body as its JSON part and its binary part (empty without the extension)."""
        try:
            if header_length is None:
                return json.loads(raw), b""
            length = int(header_length)
            if not 0 < length <= len(raw):
                raise BadRequest(f"{BINARY_HEADER}: {length} is not within the body's {len(raw)} bytes")
            return json.loads(raw[:length]), raw[length:]
        except ValueError as exc:
            if isinstance(exc, BadRequest):
                raise
            raise BadRequest(f"the body is not JSON: {exc}") from None

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
            return body.get("id"), self._binary(body, binary, dtype, shape, size)
        try:
            data = np.asarray(tensor.get("data"), dtype=dtype).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"data does not fill shape {shape} with numbers ({exc})") from None
        return body.get("id"), data.astype(np.float32)

    @staticmethod
    def _binary(body: dict, binary: bytes, dtype, shape: list[int], size: object) -> np.ndarray:
        if not binary and BINARY_KEY in body:
            binary = base64.b64decode(body[BINARY_KEY])
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size != expected or len(binary) != expected:
            raise BadRequest(f"binary_data_size {size} with {len(binary)} bytes sent: shape {shape} of "
                             f"{np.dtype(dtype).name} is {expected} bytes")
        return np.frombuffer(binary, dtype=dtype).reshape(shape).astype(np.float32)

    def encode_infer(self, request_id: str | None, logits: np.ndarray) -> dict:
        out = {"model_name": self.model_name, "model_version": "1",
               "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": list(logits.shape),
                            "data": logits.ravel().tolist()}]}
        return {**out, "id": request_id} if request_id is not None else out

    def decode_image(self, data: bytes) -> np.ndarray:
        """Image bytes as one float32 sample, by the bundle's own predict.py; BadRequest if unreadable."""
        if self._preprocess is None:
            spec = importlib.util.spec_from_file_location("bundle_predict", self.bundle.folder / "predict.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._preprocess = module.Classifier(self.bundle.folder / "student.onnx", threads=1)
        try:
            return self._preprocess.pixels(io.BytesIO(data))
        except ValueError as exc:  # Pillow names the buffer object: say "the upload" instead
            raise BadRequest(f"the upload is not an image this model can read: "
                             f"{re.sub(r'<[^>]*>', 'the upload', str(exc))}") from None

    def encode_classification(self, logits: np.ndarray) -> dict:
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        best = int(probabilities.argmax())
        return {"label": self.classes[best], "index": best, "probability": float(probabilities[best]),
                "probabilities": {c: float(p) for c, p in zip(self.classes, probabilities, strict=True)}}
