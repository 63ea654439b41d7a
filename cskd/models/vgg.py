"""VGG with batch norm for CIFAR, fully connected layers removed (RepDistiller ``vgg.py``;
the KD literature's ``vgg8`` and ``vgg13`` are the ``_bn`` variants)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cskd.models.registry import register_model

_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _stage(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        in_channels = w
    return nn.Sequential(*layers[:-1])  # the stage's last ReLU is applied in forward


class VGG(nn.Module):
    def __init__(self, config: list[list[int]], *, num_classes: int, in_channels: int):
        super().__init__()
        chans = [in_channels] + [stage[-1] for stage in config]
        self.stages = nn.ModuleList(_stage(config[i], chans[i]) for i in range(5))
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(
                    0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
                )
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = F.relu(stage(x))
            # Max-pool after the first three stages (32 -> 4 on CIFAR); skip once too small.
            if i < 3 and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _register(name: str) -> None:
    def factory(*, num_classes: int, in_channels: int = 3) -> nn.Module:
        return VGG(_CONFIGS[name], num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = name
    register_model(factory)


for _name in _CONFIGS:
    _register(_name)
