"""Wide ResNets for CIFAR as used in the KD literature (RepDistiller ``wrn.py``).

Pre-activation blocks, depth 6n+4, widths (16, 16k, 32k, 64k).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cskd.models.registry import register_model


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.shortcut = (
            None
            if in_planes == out_planes
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # With a projection the shortcut sees the pre-activated input (as in the reference).
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, *, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [
                _PreActBlock(
                    widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(
                    0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
                )
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _register(name: str, depth: int, widen: int) -> None:
    def factory(*, num_classes: int, in_channels: int = 3) -> nn.Module:
        return WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = name
    register_model(factory)


for _name, _depth, _widen in (
    ("wrn_16_1", 16, 1),
    ("wrn_16_2", 16, 2),
    ("wrn_40_1", 40, 1),
    ("wrn_40_2", 40, 2),
):
    _register(_name, _depth, _widen)
