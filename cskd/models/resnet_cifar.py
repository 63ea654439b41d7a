"""CIFAR ResNets of the KD literature (RepDistiller / mdistiller ``resnet.py``).

Depth 6n+2 with three stages of BasicBlocks; the ``x4`` variants widen every
stage four times. Global average pooling is adaptive, so any input from 8x8 up works.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cskd.models.registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], *, num_classes: int, in_channels: int
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = widths[0]
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, widths[3]]`` (the feature tap for feature-based methods)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

# name -> (depth, stage widths); the names are the ones the KD papers use.
_VARIANTS = {
    "resnet8": (8, _NARROW),
    "resnet14": (14, _NARROW),
    "resnet20": (20, _NARROW),
    "resnet32": (32, _NARROW),
    "resnet44": (44, _NARROW),
    "resnet56": (56, _NARROW),
    "resnet110": (110, _NARROW),
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(*, num_classes: int, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = name
    register_model(factory)


for _name, (_depth, _widths) in _VARIANTS.items():
    _register(_name, _depth, _widths)
