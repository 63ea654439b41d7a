"""Teachers and students from torchvision and timm, started from their own weights files,
each with its own input normalisation inside the network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import write_manifest


def _folder(root, classes=("cat", "dog", "fox"), train=6, test=3, size=32):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", train), ("test", test)):
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                base = np.zeros((size, size, 3), dtype=np.uint8)
                base[..., k] = 160  # one colour per class, plus noise: learnable in one epoch
                image = np.clip(base + rng.randint(0, 60, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / cls / f"{i}.png")
    return root


def _run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


TRAIN = "{epochs: 1, batch_size: 6, lr: 0.01, schedule: constant, augment: {crop_padding: 2, flip: true}}"


def test_a_torchvision_resnet18_imagenet_state_dict_teaches_a_timm_student(workdir):
    """The issue's two cases in one run: a teacher fine-tuned from a torchvision-format resnet18
    state dict with 1,000 classes onto a 3-class folder, and a ``timm:`` student."""
    import torchvision

    pytest.importorskip("timm")
    _folder(workdir / "pets")
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet18(num_classes=1000)  # stands in for ImageNet weights
    torch.save(pretrained.state_dict(), workdir / "resnet18-imagenet.pth")
    write_manifest(workdir, f"""
name: pets
data: {{name: imagefolder, root: pets, val_fraction: 0.2}}
teacher:
  model: torchvision:resnet18
  init: {{path: resnet18-imagenet.pth, format: torchvision}}
  train: {TRAIN}
student:
  model: timm:test_resnet
  preprocess: dataset        # each model its own normalisation: the teacher keeps ImageNet's
  loss: {{kind: cskd, preset: core}}
  train: {TRAIN}
export: {{targets: [onnx]}}
gate: {{max_drop: 100.0, min_onnx_agreement: 99.0, min_teacher_top1: 0}}
""", "pets.yaml")
    code, out = _run("run", "-m", "pets.yaml", "-q")
    assert code == 0, out
    card = json.loads((workdir / "shipped" / "pets" / "latest" / "model_card.json").read_text())
    teacher, student = card["teacher"], card["student"]
    assert teacher["model"] == "torchvision:resnet18" and student["model"] == "timm:test_resnet"
    assert teacher["init"]["reinitialised"] == ["fc.bias", "fc.weight"]  # the 1,000-class head is new
    assert teacher["init"]["format"] == "torchvision" and len(teacher["init"]["sha256"]) == 64
    assert teacher["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet's, by default
    assert teacher["normalization"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert "init" not in student and student["normalization"]["mean"] != pytest.approx([0.485, 0.456, 0.406])
    assert card["metrics"]["onnx_agreement"] >= 99.0  # the timm student exports and agrees with PyTorch

    # The file's backbone, not a random one, is what training started from.
    from cskd.models.init import load_initial_weights

    net = torchvision.models.resnet18(num_classes=3)
    fresh = load_initial_weights(net, workdir / "resnet18-imagenet.pth", fmt="torchvision", num_classes=3)
    assert fresh == ["fc.bias", "fc.weight"] and torch.equal(net.conv1.weight, pretrained.conv1.weight)
    assert net.fc.weight.shape == (3, 512)


def test_weights_that_do_not_fit_name_the_layer_and_pickles_are_refused(tmp_path):
    import torchvision

    from cskd.errors import CheckpointError
    from cskd.models.init import load_initial_weights

    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"r34\.pth: layer 'layer1\.2\.conv1\.weight' is not in the model \(wrong architecture\?\)"):
        load_initial_weights(torchvision.models.resnet18(num_classes=10), tmp_path / "r34.pth", fmt="auto",
                             num_classes=10)
    wide = torchvision.models.resnet18(num_classes=10).state_dict()
    wide["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(wide, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"layer 'layer1\.0\.conv1\.weight' has shape \(64, 64, 5, 5\)"):
        load_initial_weights(torchvision.models.resnet18(num_classes=10), tmp_path / "odd.pth", fmt="auto",
                             num_classes=10)
    # A class count that differs is only forgiven for the head, and only when training follows.
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "in1k.pth")
    with pytest.raises(CheckpointError, match=r"layer 'fc\.weight' has shape \(1000, 512\)"):
        load_initial_weights(torchvision.models.resnet18(num_classes=10), tmp_path / "in1k.pth", fmt="auto",
                             num_classes=10, allow_new_head=False)

    class Payload:  # a pickle that would run code on load
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not a state dict torch.load can read safely"):
        load_initial_weights(torchvision.models.resnet18(num_classes=10), tmp_path / "evil.pth", fmt="auto",
                             num_classes=10)


def test_model_names_and_preprocess_are_validated_in_one_line(workdir):
    from tests.conftest import edited

    for change, needle in (({"teacher__model": "torchvision:resnet_nine"}, "torchvision has no classification model"),
                           ({"student__model": "nonsense"}, "torchvision:<name>, timm:<name>"),
                           ({"student__preprocess": {"mean": [0.5], "std": [0.2, 0.3]}}, "one value per channel"),
                           ({"student__init": {"path": "missing.pth"}}, "student.init.path: missing.pth not found")):
        path = write_manifest(workdir, edited(**change))
        code, out = _run("plan", "-m", str(path))
        assert code == 2, (change, out)
        assert len(out.strip().splitlines()) == 1 and needle in out, (change, out)


@pytest.mark.slow  # a torchvision resnet34 teacher and resnet18 student at 64 px: about 30 s on 2 cores
def test_the_imagenet_manifest_runs_on_files_in_imagenets_layout(workdir):
    """imagenet-resnet34-resnet18.yaml as shipped, on a 3-class stand-in the test writes: train/ and
    val/ with wnid folders of .JPEG files, streamed, and a torchvision resnet34 state dict as the
    teacher checkpoint (no sha256 given: it is computed from the file)."""
    import shutil

    import torchvision
    from PIL import Image

    from tests.conftest import REPO

    rng = np.random.RandomState(0)
    for split, n in (("train", 8), ("val", 2)):
        for k, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            (workdir / "data" / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(n):
                base = np.zeros((90, 120, 3), dtype=np.uint8)  # not square: crops do the work
                base[..., k] = 150
                image = np.clip(base + rng.randint(0, 80, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(workdir / "data" / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG")
    (workdir / "weights").mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), workdir / "weights" / "resnet34-imagenet.pth")
    shutil.copy(REPO / "manifests" / "imagenet-resnet34-resnet18.yaml", workdir / "imagenet.yaml")
    code, out = _run("run", "-m", "imagenet.yaml", "-q", "-o", "data.image_size=64", "-o", "data.workers=0",
                     "-o", "data.val_fraction=0.25", "-o", "student.train.epochs=1", "-o", "student.train.batch_size=6",
                     "-o", "student.train.precision=fp32", "-o", "distributed.nproc=1", "-o", "export.targets=[onnx]",
                     "-o", "latency.batch_sizes=[1]", "-o", "gate.max_drop=100", "-o", "gate.min_teacher_top1=0")
    assert code == 0, out
    card = json.loads((workdir / "shipped" / "imagenet-resnet34-resnet18" / "latest" / "model_card.json").read_text())
    assert card["teacher"]["model"] == "torchvision:resnet34" and card["student"]["model"] == "torchvision:resnet18"
    assert card["metrics"]["samples"] == 6  # val/ is the test split
    assert card["data"]["image_size"] == [64, 64] and card["metrics"]["onnx_agreement"] >= 99.0
