"""ResNeXt-50 32x4d (Xie et al. 2017), torchvision's layout with (1, 2, 2, 1) blocks per stage instead of
(3, 4, 6, 3).

Stem Conv 7x7/2 (64) - BN - ReLU - MaxPool 3x3/2; bottleneck blocks ``Conv 1x1 (w) - BN - ReLU -
Conv 3x3 (w, groups 32, stride) - BN - ReLU - Conv 1x1 (4·planes) - BN``, added to the input (or to a
Conv 1x1/stride - BN shortcut where the shape changes), then ReLU. Planes 64, 128, 256, 512 give grouped
widths w = 128, 256, 512, 1024 (4, 8, 16, 32 channels per group: "32x4d" names the first stage) and
outputs 256 .. 2048; global pool, Linear → 1000.
"""

from __future__ import annotations

import torch
from torch import nn

from models.zoo.layers import resnet_stem

GROUPS = 32
WIDTH_PER_GROUP = 4
BLOCKS = (1, 2, 2, 1)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        width = planes * WIDTH_PER_GROUP * GROUPS // 64
        c_out = planes * 4
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=GROUPS, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class ResNeXt(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = resnet_stem(64)
        c_in = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), BLOCKS)):
            for j in range(n):
                layers.append(Bottleneck(c_in, planes, 2 if i > 0 and j == 0 else 1))
                c_in = planes * 4
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
