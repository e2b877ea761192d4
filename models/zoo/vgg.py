"""A plain VGG-style network (Simonyan & Zisserman 2015) with BatchNorm, as torchvision's vgg11_bn, narrower.

Stages of ``Conv 3x3 - BN - ReLU`` (32 | 64 | 128 | 256, 256 | 512, 512 channels), each closed by
MaxPool 2x2/2 (224 → 7), then the VGG classifier on the *flattened* 512x7x7 map: Flatten - Linear 25088 →
512 - ReLU - Linear 512 → 512 - ReLU - Linear 512 → 1000 (torchvision: 4096-wide; 512 keeps the file at
about 60 MB). The Flatten → Gemm couples each conv channel of the last stage to 49 Gemm input columns.
"""

from __future__ import annotations

import torch
from torch import nn

from models.zoo.layers import ConvBNAct

#: Conv widths, "M" for a MaxPool 2x2/2.
CONFIG = (32, "M", 64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
HIDDEN = 512


class VGG(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                layers.append(ConvBNAct(c_in, int(item), 3))
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * 7 * 7, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
