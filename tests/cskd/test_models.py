"""The model registry: published parameter counts, logits-only forward, any input size."""

from __future__ import annotations

import pytest
import torch

from cskd.models import create_model, list_models

# With 100 classes and 3 input channels (RepDistiller / mdistiller figures).
PUBLISHED = {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "resnet20": 278_324, "resnet56": 861_620,
             "resnet110": 1_736_564}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_figures(name):
    model = create_model(name, num_classes=100, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


# Deep models run at 8x8 only, to keep the suite fast.
_DEEP = {"resnet110", "resnet56", "resnet32x4", "resnet44"}
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
