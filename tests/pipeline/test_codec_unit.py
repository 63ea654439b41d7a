"""The serving codec on a hand-made bundle card (no server, no model): every bad request is a
``BadRequest`` naming the problem, every answer names the version. Fast enough for `make mutants`
(``serving/runtime.py``); test_serve.py speaks to real servers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from serving.codec import BINARY_KEY, BadRequest, Codec, parse_json
from serving.runtime import Bundle

CARD = {"name": "tiny", "input": {"name": "images", "shape": [1, 1, 8, 8]}, "output": {"name": "logits"},
        "class_names": [str(i) for i in range(3)]}


@pytest.fixture
def codec(tmp_path) -> Codec:
    folder = tmp_path / "v7"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps(CARD))
    return Codec(Bundle.open(folder), "tiny")


def _request(data=None, *, shape=(1, 1, 8, 8), name="images", datatype="FP32", parameters=None) -> dict:
    tensor = {"name": name, "datatype": datatype, "shape": list(shape)}
    if data is not None:
        tensor["data"] = data
    if parameters is not None:
        tensor["parameters"] = parameters
    return {"id": "r1", "inputs": [tensor]}


def test_the_version_is_the_folders_and_every_answer_names_it(codec, tmp_path):
    assert codec.version == "7" and codec.metadata("onnxruntime_onnx")["versions"] == ["7"]
    out = codec.encode_infer("r1", np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
    assert out["model_version"] == "7" and out["id"] == "r1" and out["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    assert "id" not in codec.encode_infer(None, np.zeros((1, 3), dtype=np.float32))
    assert codec.encode_classification(np.array([0.0, 5.0, 1.0]))["model_version"] == "7"
    copied = tmp_path / "somewhere"
    copied.mkdir()
    (copied / "model_card.json").write_text(json.dumps(CARD))
    (copied / "SHA256SUMS").write_text("a sealed copy\n")
    import hashlib

    assert Bundle.open(copied).version == hashlib.sha256(b"a sealed copy\n").hexdigest()[:12]
    (copied / "SHA256SUMS").unlink()
    assert Bundle.open(copied).version == "unsealed"


def test_non_finite_logits_are_null_and_counted_not_a_crash(codec):
    out = codec.encode_infer(None, np.array([[1.0, np.nan, np.inf]], dtype=np.float32))
    json.dumps(out, allow_nan=False)  # JSON without NaN: what a server can send
    assert out["outputs"][0]["data"] == [1.0, None, None] and out["outputs"][0]["parameters"] == {"non_finite": 2}
    label = codec.encode_classification(np.array([np.nan, 1.0, 0.0]))
    json.dumps(label, allow_nan=False)
    assert label["label"] is None and "non-finite" in label["error"]


@pytest.mark.parametrize("raw, says", [
    (b"[NaN]", "NaN is not a number"),
    (b"[Infinity]", "Infinity is not a number"),
    (b"[-Infinity]", "-Infinity is not a number"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b"{images", "not JSON"),
])
def test_hostile_json_is_a_bad_request(raw, says):
    with pytest.raises(BadRequest, match=says):
        parse_json(raw)


def test_a_good_request_decodes_json_fp16_fp64_and_binary(codec):
    pixels = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 64
    for datatype in ("FP32", "FP16", "FP64"):
        rid, batch = codec.decode_infer(_request(pixels.ravel().tolist(), datatype=datatype))
        assert rid == "r1" and batch.dtype == np.float32 and np.allclose(batch, pixels, atol=1e-3)
    header = _request(parameters={"binary_data_size": 256})
    _, batch = codec.decode_infer(header, pixels.tobytes())
    assert np.array_equal(batch, pixels)
    _, batch = codec.decode_infer({**header, BINARY_KEY: base64.b64encode(pixels.tobytes()).decode()})
    assert np.array_equal(batch, pixels)
    body = json.dumps(header).encode()
    assert codec.split_binary(body + pixels.tobytes(), str(len(body))) == (header, pixels.tobytes())
    assert codec.split_binary(body, None) == (header, b"")


@pytest.mark.parametrize("request_, binary, says", [
    ({"inputs": []}, b"", "one tensor named 'images'"),
    ({"inputs": [{}, {}]}, b"", "one tensor named 'images'"),
    ([1], b"", "one tensor named 'images'"),
    (_request([0.0] * 64, name="input"), b"", "the input tensor is named 'images'"),
    (_request([0.0] * 64, datatype="BYTES"), b"", "takes FP32"),
    (_request([], shape=(0, 1, 8, 8)), b"", "this model takes [N, 1, 8, 8]"),  # a zero-size batch
    (_request([0.0] * 64, shape=(1, 8, 8)), b"", "this model takes [N, 1, 8, 8]"),
    (_request([0.0] * 64, shape=(1, 1, 8, 9)), b"", "this model takes [N, 1, 8, 8]"),
    (_request([0.0] * 64, shape=(1.0, 1, 8, 8)), b"", "this model takes [N, 1, 8, 8]"),
    (_request([0.0] * 63), b"", "does not fill shape"),
    (_request(["a"] * 64), b"", "does not fill shape"),
    (_request([1e39] + [0.0] * 63), b"", "1 values are NaN or infinite"),  # past FP32's range
    (_request(parameters={"binary_data_size": 255}), b"\0" * 256, "binary_data_size 255 with 256 bytes"),
    (_request(parameters={"binary_data_size": 256}), b"\0" * 255, "binary_data_size 256 with 255 bytes"),
    (_request(parameters={"binary_data_size": 256}), np.full(64, np.nan, np.float32).tobytes(),
     "64 values are NaN or infinite"),
])
def test_every_malformed_request_is_named(codec, request_, binary, says):
    with pytest.raises(BadRequest, match=None) as failed:
        codec.decode_infer(request_, binary)
    assert says in str(failed.value)


@pytest.mark.parametrize("length, says", [("0", "0 is not within"), ("999", "999 is not within"),
                                          ("x", "'x' is not a number of bytes")])
def test_a_wrong_binary_header_length_is_named(codec, length, says):
    with pytest.raises(BadRequest, match=says):
        codec.split_binary(b'{"inputs": []}' + b"\0" * 8, length)


def test_uploads_decode_by_the_pipelines_rules_and_a_bomb_is_refused(codec, monkeypatch):
    import io

    from PIL import Image

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    assert np.array_equal(codec.decode_image(png(gray)), gray[None].astype(np.float32) / 255.0)
    rgb = np.stack([gray, gray // 2, gray // 3], axis=-1)  # colour to gray by the pipeline's luma
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)[None] / 255.0
    assert np.array_equal(codec.decode_image(png(rgb)), expected)
    big = codec.decode_image(png(np.kron(gray, np.ones((2, 2), dtype=np.uint8))))  # 16x16 resized to 8x8
    assert big.shape == (1, 8, 8)
    import cskd.data.decode as decode

    monkeypatch.setattr(decode, "DEFAULT_MAX_PIXELS", 63)  # one pixel under an 8x8 image
    with pytest.raises(BadRequest, match="over data.max_image_pixels .*send a smaller image"):
        codec.decode_image(png(gray))
    assert "remove it" not in str(pytest.raises(BadRequest, codec.decode_image, png(gray)).value)


def test_a_folder_without_a_card_is_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        Bundle.open(Path(tmp_path))


def test_every_answer_is_exactly_the_protocols_shape(codec):
    assert codec.metadata("openvino") == {
        "name": "tiny", "versions": ["7"], "platform": "openvino",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        "parameters": {"class_names": ["0", "1", "2"]}}
    logits = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    assert codec.encode_infer("a", logits) == {
        "model_name": "tiny", "model_version": "7", "id": "a",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": logits.ravel().tolist()}]}
    assert codec.encode_infer(None, np.array([[np.inf, 0.0, 1.0]], dtype=np.float32))["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [None, 0.0, 1.0],
         "parameters": {"non_finite": 1}}]
    scores = np.array([1.0, 3.0, 2.0])
    expected = np.exp(scores - 3.0) / np.exp(scores - 3.0).sum()
    answer = codec.encode_classification(scores)
    assert answer == {"label": "1", "index": 1, "probability": pytest.approx(expected[1]), "model_version": "7",
                      "probabilities": {"0": pytest.approx(expected[0]), "1": pytest.approx(expected[1]),
                                        "2": pytest.approx(expected[2])}}
    assert isinstance(answer["index"], int) and isinstance(answer["probability"], float)
    assert codec.encode_classification(np.array([0.0, np.nan, 1.0])) == {
        "label": None, "index": None, "probability": None, "probabilities": None, "model_version": "7",
        "error": "the model gave non-finite logits for this image"}


def test_the_messages_name_the_numbers(codec):
    with pytest.raises(BadRequest) as failed:
        codec.decode_infer(_request(parameters={"binary_data_size": 100}), b"\0" * 40)
    assert str(failed.value) == ("binary_data_size 100 with 40 bytes sent: shape [1, 1, 8, 8] of float32 is "
                                 "256 bytes")
    with pytest.raises(BadRequest) as failed:
        codec.split_binary(b"{}" + b"\0" * 3, "9")
    assert str(failed.value) == "inference-header-content-length: 9 is not within the body's 5 bytes"
    with pytest.raises(BadRequest) as failed:
        parse_json(b"{nope")
    assert str(failed.value).startswith("the body is not JSON: ")
    with pytest.raises(BadRequest) as failed:
        codec.decode_infer(_request([0.0] * 64, datatype="INT8"))
    assert str(failed.value) == "datatype 'INT8': this model takes FP32 (FP16 and FP64 are converted)"
    with pytest.raises(BadRequest) as failed:
        codec.decode_infer(_request([np.nan] * 2 + [0.0] * 62))
    assert str(failed.value) == "2 values are NaN or infinite (in FP32): send finite values"
    rid, batch = codec.decode_infer({"inputs": _request([0.5] * 64)["inputs"]})  # no id: None
    assert rid is None and batch.shape == (1, 1, 8, 8) and batch.dtype == np.float32
    half = np.full(64, 0.25, dtype=np.float16)
    _, batch = codec.decode_infer(_request(datatype="FP16", parameters={"binary_data_size": 128}), half.tobytes())
    assert batch.dtype == np.float32 and np.all(batch == 0.25)
    assert codec.split_binary(b'{"a": 1}' + b"xy", "8") == ({"a": 1}, b"xy")


def test_a_colour_model_gets_its_uploads_resized_as_predict_py_resizes_them(tmp_path):
    import io

    from PIL import Image

    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps({**CARD, "input": {"name": "images", "shape": [1, 3, 8, 8]}}))
    codec = Codec(Bundle.open(folder), "rgb")
    rng = np.random.default_rng(0)
    for size in (8, 16, 11):
        rgb = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)  # H x W, not square
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        resized = np.asarray(Image.fromarray(rgb).resize((8, 8), Image.BILINEAR))
        expected = resized.transpose(2, 0, 1).astype(np.float32) / 255.0
        assert np.array_equal(codec.decode_image(buffer.getvalue()), expected), size


def test_exact_messages_and_the_bounds_of_the_binary_header(codec):
    with pytest.raises(BadRequest) as failed:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    assert str(failed.value) == "the body nests too deeply to be an infer request (it needs 4 levels)"
    with pytest.raises(BadRequest) as failed:
        codec.decode_image(b"not an image at all")
    assert str(failed.value).startswith("the upload: not a readable image (") and "remove" not in str(failed.value)
    assert codec.split_binary(b"7", "1") == (7, b"")  # a header of one byte, and one of the whole body
    assert codec.split_binary(b'{"a": 2}', "8") == ({"a": 2}, b"")


def test_the_pixel_limit_is_exact_at_its_boundary(codec, monkeypatch):
    """An 8x8 upload (64 pixels) passes a limit of 64 and is refused at 63, through the server's
    path and the data path alike (one decoder)."""
    import io

    from PIL import Image

    import cskd.data.decode as decode
    from cskd.errors import DataError

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    for limit, ok in ((64, True), (63, False), (65, True)):
        monkeypatch.setattr(decode, "DEFAULT_MAX_PIXELS", limit)
        if ok:
            assert codec.decode_image(buffer.getvalue()).shape == (1, 8, 8)
            assert decode.decode_image(buffer.getvalue(), channels=1).shape == (1, 8, 8)
        else:
            with pytest.raises(BadRequest, match="8x8 is 64 pixels, over data.max_image_pixels \\(63\\)"):
                codec.decode_image(buffer.getvalue())
            with pytest.raises(DataError, match="over data.max_image_pixels"):
                decode.decode_image(buffer.getvalue(), channels=1, where="x.png")
    monkeypatch.setattr(decode, "DEFAULT_MAX_PIXELS", 10**9)  # data.max_image_pixels given: it decides
    assert decode.decode_image(buffer.getvalue(), channels=1, max_pixels=64).shape == (1, 8, 8)
    with pytest.raises(DataError, match=r"x.png: 8x8 is 64 pixels, over data.max_image_pixels \(63\)"):
        decode.decode_image(buffer.getvalue(), channels=1, where="x.png", max_pixels=63)
