"""ShuffleNetV2 1.0x (Ma et al. 2018), torchvision's layout with (2, 3, 2) blocks per stage, not (4, 8, 4).

Stem Conv 3x3/2 (24) - BN - ReLU - MaxPool 3x3/2; stages of 116, 232, 464 channels; Conv 1x1 (1024) - BN -
ReLU, global mean, Linear → 1000.

A stride-1 unit splits its input in two halves along channels (``chunk`` → two ONNX ``Slice``), keeps the
first and runs the second through ``Conv 1x1 - BN - ReLU - depthwise 3x3 - BN - Conv 1x1 - BN - ReLU``;
a stride-2 unit runs the whole input through two branches (the left one ``depthwise 3x3/2 - BN -
Conv 1x1 - BN - ReLU``). Either way the two halves are concatenated and *channel-shuffled* with 2 groups:
``view(N, 2, C/2, H, W) → transpose(1, 2) → view(N, C, H, W)``, which exports as ``Reshape → Transpose →
Reshape`` with the shape computed from the input's ``Shape`` (dynamic batch).
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_CHANNELS = (116, 232, 464)
STAGE_BLOCKS = (2, 3, 2)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def _depthwise(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    ]


def _pointwise(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(*_depthwise(c_in, stride), *_pointwise(c_in, half))
        branch2_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(
            *_pointwise(branch2_in, half), *_depthwise(half, stride), *_pointwise(half, half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 24, 3, 2, 1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        c_in = 24
        for c_out, n in zip(STAGE_CHANNELS, STAGE_BLOCKS):
            for i in range(n):
                layers.append(ShuffleUnit(c_in, c_out, 2 if i == 0 else 1))
                c_in = c_out
        layers += _pointwise(c_in, 1024)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean([2, 3]))
