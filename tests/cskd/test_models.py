"""The model registry: published parameter counts, logits-only forward, any input size."""

from __future__ import annotations

import pytest
import torch

from cskd.models import create_model, list_models

# With 100 classes and 3 input channels (RepDistiller / mdistiller figures).
PUBLISHED = {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "resnet20": 278_324, "resnet56": 861_620,
             "resnet110": 1_736_564}


# Published in millions (CRD / RepDistiller tables), 100 classes, 3 channels.
PUBLISHED_M = {"wrn_40_2": 2.26, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg13": 9.46, "vgg8": 3.96,
               "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
               # torchvision's own figures (1000 classes) for the ImageNet models
               }
TORCHVISION_1000 = {"resnet18": 11_689_512, "mobilenet_v3_small": 2_542_856}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_kd_zoo_parameter_counts_match_published_millions(name):
    model = create_model(name, num_classes=100, in_channels=3)
    # The tables print 2 decimals (some truncate: vgg8 has 3,965,028 and is listed as 3.96M).
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - PUBLISHED_M[name]) < 0.006


@pytest.mark.parametrize("name", sorted(TORCHVISION_1000))
def test_torchvision_models_by_name(name):
    model = create_model(name, num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_1000[name]
    gray = create_model(name, num_classes=10, in_channels=1).eval()
    assert gray(torch.rand(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_figures(name):
    model = create_model(name, num_classes=100, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


# Deep models run at 8x8 only, to keep the suite fast.
_DEEP = {"resnet110", "resnet56", "resnet32x4", "resnet44", "resnet18", "resnet34", "resnet50", "vgg16",
         "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "wrn_40_2", "vgg13", "ShuffleV1", "ShuffleV2",
         "MobileNetV2", "vgg11", "wrn_40_1"}
SIZES = [(name, c, s) for name in list_models() for c, s in [(1, 8), (3, 32), (1, 28)]
         if name not in _DEEP or s == 8]


@pytest.mark.parametrize(("name", "channels", "size"), SIZES)
def test_forward_returns_logits_for_any_size(name, channels, size):
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    out = model(torch.rand(2, channels, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet8x4"):
        create_model("resnet9000", num_classes=10)
