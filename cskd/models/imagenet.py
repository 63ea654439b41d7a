"""torchvision's ImageNet architectures by name, for users who bring standard models.

Built untrained (no weight download); ``in_channels`` other than 3 replaces the stem.
"""

from __future__ import annotations

import torch.nn as nn

from cskd.models.registry import register_model

_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        bias=child.bias is not None,
                    ),
                )
                return


def _register(name: str) -> None:
    def factory(*, num_classes: int, in_channels: int = 3) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_stem(model, in_channels)
        return model

    factory.__name__ = name
    register_model(factory)


for _name in _NAMES:
    _register(_name)
