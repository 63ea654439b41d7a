"""Small CIFAR students of the KD literature: MobileNetV2 (width 0.5, expansion 6,
RepDistiller's ``mobile_half``), ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cskd.models.registry import register_model


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ------------------------------------------------------------------ MobileNetV2
class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn(cin, mid, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(mid, mid, 3, stride, groups=mid),
            nn.ReLU(inplace=True),
            *_conv_bn(mid, cout, 1),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Net(nn.Module):
    # (expansion, channels, blocks, first stride); expansion None -> the model's T.
    _SETTING = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(
        self, *, num_classes: int, in_channels: int, expansion: int = 6, width: float = 0.5
    ):
        super().__init__()
        channels = int(32 * width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, channels, 3, 2), nn.ReLU(inplace=True))
        blocks = []
        for t, c, n, s in self._SETTING:
            out = int(c * width)
            for i in range(n):
                blocks.append(_InvertedResidual(channels, out, s if i == 0 else 1, t or expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.head = nn.Sequential(*_conv_bn(channels, last, 1), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(
                    0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
                )
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward_features(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


# ------------------------------------------------------------------ ShuffleNetV1
class _ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not grouped
        self.first_groups, self.stride = first_groups, stride
        self.conv1 = nn.Sequential(*_conv_bn(cin, mid, 1, groups=first_groups))
        self.conv2 = nn.Sequential(*_conv_bn(mid, mid, 3, stride, groups=mid))
        self.conv3 = nn.Sequential(*_conv_bn(mid, cout, 1, groups=groups))

    def forward(self, x):
        out = _channel_shuffle(F.relu(self.conv1(x)), self.first_groups)
        out = self.conv3(F.relu(self.conv2(out)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        widths=(240, 480, 960),
        blocks=(4, 8, 4),
        groups=3,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)
        )
        units, cin = [], 24
        for width, n in zip(widths, blocks, strict=True):
            for i in range(n):
                # A strided unit concatenates its input, so its branch makes width - cin channels.
                units.append(
                    _ShuffleV1Unit(
                        cin, width - cin if i == 0 else width, 2 if i == 0 else 1, groups
                    )
                )
                cin = width
        self.units = nn.Sequential(*units)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.units(self.stem(x)), 1), 1)

    def forward(self, x):
        return self.linear(self.forward_features(x))


# ------------------------------------------------------------------ ShuffleNetV2
class _ShuffleV2Basic(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, groups=half),
            *_conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        return _channel_shuffle(torch.cat([keep, self.branch(work)], 1), 2)


class _ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(
            *_conv_bn(cin, cin, 3, 2, groups=cin), *_conv_bn(cin, mid, 1), nn.ReLU(inplace=True)
        )
        self.right = nn.Sequential(
            *_conv_bn(cin, mid, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(mid, mid, 3, 2, groups=mid),
            *_conv_bn(mid, mid, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return _channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self, *, num_classes: int, in_channels: int, widths=(116, 232, 464, 1024), blocks=(3, 7, 3)
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)
        )
        stages, cin = [], 24
        for width, n in zip(widths[:3], blocks, strict=True):
            stages += [_ShuffleV2Down(cin, width)] + [_ShuffleV2Basic(width) for _ in range(n)]
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_conv_bn(cin, widths[3], 1), nn.ReLU(inplace=True))
        self.linear = nn.Linear(widths[3], num_classes)

    def forward_features(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.head(self.stages(self.stem(x))), 1), 1)

    def forward(self, x):
        return self.linear(self.forward_features(x))


@register_model
def MobileNetV2(*, num_classes: int, in_channels: int = 3) -> nn.Module:  # noqa: N802
    return MobileNetV2Net(num_classes=num_classes, in_channels=in_channels)


@register_model
def ShuffleV1(*, num_classes: int, in_channels: int = 3) -> nn.Module:  # noqa: N802
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


@register_model
def ShuffleV2(*, num_classes: int, in_channels: int = 3) -> nn.Module:  # noqa: N802
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
