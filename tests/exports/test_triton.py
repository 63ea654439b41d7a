"""`export --target triton`: a Triton model repository whose every config.pbtxt parses with the
ModelConfig protobuf tritonclient ships, and says what the ONNX model says (names, dims, types,
batch size), with the bundle's own files and class names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from pipeline.cli import main

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (the [serve] extra)")


def _parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_config_parses_and_matches_the_models(shipped_run, monkeypatch, tmp_path):
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    out = tmp_path / "repo"
    targets = "export.targets=[onnx, onnx-int8, openvino]"
    result = CliRunner().invoke(main, ["export", "-m", str(manifest), "--target", "triton", "--out", str(out),
                                       "-o", targets, "-o", "latency={batch_sizes: [1, 16]}", "--quiet",
                                       "-o", "export.int8.operators=weighted"])  # no operator choice to make
    assert result.exit_code == 0, result.output
    configs = sorted(out.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["tiny_onnx", "tiny_onnx_int8", "tiny_openvino"]
    assert result.output.splitlines()[-3:] == [str(c) for c in configs]   # after the stage lines
    reference = onnx.load(str(out / "tiny_onnx" / "1" / "model.onnx"))
    graph_in, graph_out = reference.graph.input[0], reference.graph.output[0]
    dims_in = [d.dim_value for d in graph_in.type.tensor_type.shape.dim[1:]]
    dims_out = [d.dim_value for d in graph_out.type.tensor_type.shape.dim[1:]]
    classes = [str(i) for i in range(10)]
    for path in configs:
        config = _parse(path)
        assert config.name == path.parent.name and config.max_batch_size == 256   # export.trt.max_batch
        assert (config.input[0].name, list(config.input[0].dims)) == (graph_in.name, dims_in)
        assert (config.output[0].name, list(config.output[0].dims)) == (graph_out.name, dims_out)
        assert config.input[0].data_type == model_config_pb2.TYPE_FP32 == config.output[0].data_type
        assert list(config.dynamic_batching.preferred_batch_size) == [16]
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert (path.parent / config.output[0].label_filename).read_text().split() == classes
    assert _parse(configs[0]).platform == _parse(configs[1]).platform == "onnxruntime_onnx"
    assert _parse(configs[2]).backend == "openvino"
    assert sorted(p.name for p in (out / "tiny_openvino" / "1").iterdir()) == ["model.bin", "model.xml"]
    int8 = onnx.load(str(out / "tiny_onnx_int8" / "1" / "model.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)
    # the files are the bundle's: the ONNX one carries the class names in its metadata
    assert any(p.key == "cskd.class_names" for p in reference.metadata_props)


def test_a_folder_that_is_not_empty_is_refused_before_any_work(shipped_run, monkeypatch, tmp_path):
    folder, manifest, _, _ = shipped_run
    monkeypatch.chdir(folder)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", "-m", str(manifest), "--target", "triton", "--out", str(out)])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and _sha(out / "notes.txt") == _sha(out / "notes.txt")


def test_a_failed_write_leaves_nothing_and_touches_nothing_it_did_not_make(tmp_path):
    from exports.triton import write_repository

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model_card.json").write_text('{"class_names": ["a"], "input": {"name": "images", "dtype": "float32", '
                                            '"shape": ["batch", 1, 8, 8]}, "output": {"name": "logits", '
                                            '"shape": ["batch", 1]}}')
    mine = tmp_path / ".repo.tmp"          # a user's folder with the name a scratch folder could have
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):  # the bundle lacks the file the target names
        write_repository(bundle, tmp_path / "repo", {"onnx": ["student.onnx"]}, name="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (mine / "keep.txt").read_text() == "mine"
