"""DenseNet (Huang et al. 2017), torchvision's DenseNet-121 layout with fewer layers per block.

Stem Conv 7x7/2 (64) - BN - ReLU - MaxPool 3x3/2; four dense blocks of (4, 6, 8, 6) layers with growth
rate 32; between blocks a transition BN - ReLU - Conv 1x1 (halves the channels) - AvgPool 2x2/2; then
BN - ReLU - global average pool - Linear → 1000.

A dense layer reads the Concat of *all* earlier feature maps of its block and adds 32 new channels:
``BN - ReLU - Conv 1x1 (128) - BN - ReLU - Conv 3x3 (32)``. Its first BatchNormalization therefore runs on a
Concat — the pattern that makes pruning a producer's channels move offsets in every later Concat.
Widths: 64 → 192 → 96 → 288 → 144 → 400 → 200 → 392.
"""

from __future__ import annotations

import torch
from torch import nn

from models.zoo.layers import resnet_stem

GROWTH = 32
BOTTLENECK = 4
BLOCKS = (4, 6, 8, 6)


class DenseLayer(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, BOTTLENECK * GROWTH, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(BOTTLENECK * GROWTH)
        self.conv2 = nn.Conv2d(BOTTLENECK * GROWTH, GROWTH, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu(self.norm1(x)))
        return self.conv2(self.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, c_in: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * GROWTH) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def transition(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2, stride=2)
    )


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        stages: list[nn.Module] = resnet_stem(64)
        channels = 64
        for i, layers in enumerate(BLOCKS):
            stages.append(DenseBlock(channels, layers))
            channels += layers * GROWTH
            if i < len(BLOCKS) - 1:
                stages.append(transition(channels, channels // 2))
                channels //= 2
        stages += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
