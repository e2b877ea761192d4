"""MobileViT-XS (Mehta & Rastegari 2022): MobileNetV2 blocks, then blocks that mix convolution and attention.

Stem Conv 3x3/2 (16) - BN - SiLU; inverted residuals (expansion 4, SiLU) to 32, 48 (stride 2) and 48; then
three stages, each an inverted residual with stride 2 (to 64, 80, 96 channels) followed by a MobileViT block
with transformer width d = 96, 120, 144 and 2 encoder layers each (the paper: 2, 4, 3); Conv 1x1 (384) - BN
- SiLU, global pool, Linear → 1000.

MobileViT block on (N, C, H, W): local features ``Conv 3x3 - BN - SiLU - Conv 1x1 (C → d)``; *unfold* into
2x2 patches — (N, d, H, W) → (N·4, H·W/4, d): each of the 4 pixel positions inside a patch attends over all
patches — pre-LN transformer layers (4 heads, MLP 2d, SiLU) and a LayerNorm; *fold* back to (N, d, H, W);
``Conv 1x1 (d → C) - BN - SiLU``; Concat with the block's input and a fusing
``Conv 3x3 (2C → C) - BN - SiLU``.
Unfold and fold export as 6-D ``Reshape → Transpose → Reshape`` with shapes computed from ``Shape``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.zoo.layers import ConvBNAct, InvertedResidual, TransformerBlock

PATCH = 2
HEADS = 4
#: (output channels, transformer width d, encoder layers) of the three MobileViT stages.
STAGES = ((64, 96, 2), (80, 120, 2), (96, 144, 2))


class MobileViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, depth: int) -> None:
        super().__init__()
        self.local = nn.Sequential(
            ConvBNAct(channels, channels, 3, act=nn.SiLU), nn.Conv2d(channels, dim, 1, bias=False)
        )
        self.transformer = nn.Sequential(
            *(TransformerBlock(dim, HEADS, mlp_ratio=2.0, act=nn.SiLU) for _ in range(depth)),
            nn.LayerNorm(dim),
        )
        self.project = ConvBNAct(dim, channels, 1, act=nn.SiLU)
        self.fuse = ConvBNAct(2 * channels, channels, 3, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        n, d, h, w = y.shape
        patches = y.reshape(n, d, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 3, 5, 2, 4, 1)
        patches = self.transformer(patches.reshape(n * PATCH * PATCH, (h // PATCH) * (w // PATCH), d))
        y = patches.reshape(n, PATCH, PATCH, h // PATCH, w // PATCH, d).permute(0, 5, 3, 1, 4, 2)
        y = self.project(y.reshape(n, d, h, w))
        return self.fuse(torch.cat((x, y), dim=1))


class MobileViT(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBNAct(3, 16, 3, 2, act=nn.SiLU),
            InvertedResidual(16, 64, 32, act=nn.SiLU),
            InvertedResidual(32, 128, 48, stride=2, act=nn.SiLU),
            InvertedResidual(48, 192, 48, act=nn.SiLU),
        ]
        c_in = 48
        for c_out, dim, depth in STAGES:
            layers += [
                InvertedResidual(c_in, 4 * c_in, c_out, stride=2, act=nn.SiLU),
                MobileViTBlock(c_out, dim, depth),
            ]
            c_in = c_out
        layers += [ConvBNAct(c_in, 384, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(384, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
