"""The protocol side of serving a bundle: the Open Inference Protocol v2 (JSON or binary tensors)
and ``/v1/classify`` (image bytes, decoded by the pipeline's own decoder), for one bundle. A bad
request raises ``BadRequest``; bodies are parsed strictly (see runtime.py)."""

from __future__ import annotations

import base64
import json

import numpy as np

from serving.runtime import Bundle

_DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
# The binary tensor extension: the body is a JSON header of this many bytes, then the tensors' bytes
BINARY_HEADER = "inference-header-content-length"
# where an engine that can only pass JSON to its workers (LitServe) carries the binary part, base64
BINARY_KEY = "binary_data_b64"


def _reject_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a number this model takes: send finite values")


def parse_json(raw: bytes) -> object:
    """A request body as JSON, strictly: BadRequest for NaN and Infinity, or nesting deeper than the
    parser's recursion limit (json's C scanner stops there; an infer request nests 4 deep). A
    number too large for FP32 (``1e400``) parses, and ``decode_infer`` refuses the tensor."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(
            "the body nests too deeply to be an infer request (it needs 4 levels)"
        ) from None
    except ValueError as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"the body is not JSON: {exc}") from None


class BadRequest(ValueError):
    """A request the model cannot answer: wrong shape, wrong type, an undecodable image."""


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
        return {
            "name": self.model_name,
            "versions": [self.version],
            "platform": platform,
            "inputs": [
                {"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.sample_shape]}
            ],
            "outputs": [
                {"name": self.output_name, "datatype": "FP32", "shape": [-1, len(self.classes)]}
            ],
            "parameters": {"class_names": self.classes},
        }

    @staticmethod
    def split_binary(raw: bytes, header_length: str | None) -> tuple[object, bytes]:
        """A request body as its JSON part and its binary part (empty without the extension)."""
        if header_length is None:
            return parse_json(raw), b""
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(
                f"{BINARY_HEADER}: {header_length!r} is not a number of bytes"
            ) from None
        if not 0 < length <= len(raw):
            raise BadRequest(f"{BINARY_HEADER}: {length} is not within the body's {len(raw)} bytes")
        return parse_json(raw[:length]), raw[length:]

    def decode_infer(self, body: object, binary: bytes = b"") -> tuple[str | None, np.ndarray]:
        """An OIP v2 infer request (JSON tensors, or the binary tensor extension's bytes) as its id
        and
        a float32 batch; BadRequest if malformed."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("inputs"), list)
            or len(body["inputs"]) != 1
        ):
            raise BadRequest(
                f'an infer request is {{"inputs": [one tensor named {self.input_name!r}]}}'
            )
        tensor = body["inputs"][0]
        if not isinstance(tensor, dict) or tensor.get("name") != self.input_name:
            raise BadRequest(f"the input tensor is named {self.input_name!r}")
        dtype = _DATATYPES.get(tensor.get("datatype"))
        if dtype is None:
            raise BadRequest(
                f"datatype {tensor.get('datatype')!r}: this model takes FP32 (FP16 and FP64 are "
                "converted)"
            )
        shape = tensor.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) == 1 + len(self.sample_shape)
            and tuple(shape[1:]) == self.sample_shape
            and isinstance(shape[0], int)
            and shape[0] >= 1
        ):
            raise BadRequest(
                f"shape {shape}: this model takes [N, {', '.join(map(str, self.sample_shape))}]"
            )
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = self._binary(body, binary, dtype, shape, size)
        else:
            try:
                # a value past FP32's range becomes inf: refused below
                with np.errstate(over="ignore"):
                    data = (
                        np.asarray(tensor.get("data"), dtype=dtype)
                        .reshape(shape)
                        .astype(np.float32)
                    )
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"data does not fill shape {shape} with numbers ({exc})") from None
        if not np.isfinite(data).all():
            raise BadRequest(
                f"{int((~np.isfinite(data)).sum())} values are NaN or infinite (in FP32): send "
                "finite values"
            )
        return body.get("id"), data

    @staticmethod
    def _binary(body: dict, binary: bytes, dtype, shape: list[int], size: object) -> np.ndarray:
        if not binary and BINARY_KEY in body:
            binary = base64.b64decode(body[BINARY_KEY])
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size != expected or len(binary) != expected:
            raise BadRequest(
                f"binary_data_size {size} with {len(binary)} bytes sent: shape {shape} of "
                f"{np.dtype(dtype).name} is {expected} bytes"
            )
        with np.errstate(over="ignore"):
            return np.frombuffer(binary, dtype=dtype).reshape(shape).astype(np.float32)

    def encode_infer(self, request_id: str | None, logits: np.ndarray) -> dict:
        finite = np.isfinite(logits)
        # JSON has no NaN: a non-finite logit (a broken model, not a bad request) is sent as null
        # and counted
        data = (
            logits.ravel().tolist()
            if finite.all()
            else [
                v if ok else None
                for v, ok in zip(logits.ravel().tolist(), finite.ravel(), strict=True)
            ]
        )
        output = {
            "name": self.output_name,
            "datatype": "FP32",
            "shape": list(logits.shape),
            "data": data,
        }
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
            raise BadRequest(
                str(exc)
                .replace("; remove or replace it", "")
                .replace("remove it, or raise data.max_image_pixels", "send a smaller image")
            ) from None
        if chw.shape[1:] != (height, width):  # as predict.py resizes: bilinear, on the uint8 image
            hwc = chw[0] if channels == 1 else chw.transpose(1, 2, 0)
            resized = np.asarray(Image.fromarray(hwc).resize((width, height), Image.BILINEAR))
            chw = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
        return chw.astype(np.float32) / 255.0

    def encode_classification(self, logits: np.ndarray) -> dict:
        if not np.isfinite(logits).all():
            return {
                "label": None,
                "index": None,
                "probability": None,
                "probabilities": None,
                "model_version": self.version,
                "error": "the model gave non-finite logits for this image",
            }
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        best = int(probabilities.argmax())
        return {
            "label": self.classes[best],
            "index": best,
            "probability": float(probabilities[best]),
            "model_version": self.version,
            "probabilities": {
                c: float(p) for c, p in zip(self.classes, probabilities, strict=True)
            },
        }
