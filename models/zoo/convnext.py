"""ConvNeXt-T (Liu et al. 2022), torchvision's layout with (1, 1, 2, 1) blocks per stage, not (3, 3, 9, 3).

Stem Conv 4x4/4 (96) - LayerNorm2d; stages of 96, 192, 384, 768 channels, each after the first opened by
LayerNorm2d - Conv 2x2/2; global pool, LayerNorm2d, Flatten, Linear → 1000.

Block: ``x + γ ⊙ permute⁻¹(Linear(4C→C)(GELU(Linear(C→4C)(LayerNorm(permute(dwconv7x7(x)))))))`` — a
depthwise 7x7 conv, a permute to channels-last (N, H, W, C) so that LayerNorm and the two Linears act on
the channel axis (``Transpose → LayerNormalization → MatMul → GELU → MatMul → Mul(γ) → Transpose``), the
per-channel layer scale γ (drawn U(0.1, 1) here), and the residual Add. ``LayerNorm2d`` is the same
LayerNorm on channels, wrapped in permutes. GELU is the exact (erf) one. Each Linear on the 4-D
channels-last tensor exports as ``MatMul`` + ``Add``.
"""

from __future__ import annotations

import torch
from torch import nn

DIMS = (96, 192, 384, 768)
DEPTHS = (1, 1, 2, 1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an (N, C, H, W) tensor (permute, normalise, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        # Trained ConvNeXts have per-channel scales of about 0.1..1; the 1e-6 init makes the block a no-op.
        self.layer_scale = nn.Parameter(torch.empty(dim).uniform_(0.1, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        return x + (self.layer_scale * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, DIMS[0], 4, stride=4), LayerNorm2d(DIMS[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(DIMS, DEPTHS)):
            if i > 0:
                layers += [LayerNorm2d(DIMS[i - 1], eps=1e-6), nn.Conv2d(DIMS[i - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            LayerNorm2d(DIMS[-1], eps=1e-6), nn.Flatten(), nn.Linear(DIMS[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
