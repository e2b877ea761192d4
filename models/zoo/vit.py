"""ViT-S/16 (Dosovitskiy et al. 2021), timm's layout with 4 encoder layers instead of 12.

Patch embedding Conv 16x16/16 (3 → 384) → flatten to 196 tokens; a learned class token is concatenated in
front and a learned position embedding (197 x 384) added; four pre-LN encoder layers (6 heads of 64,
MLP 384 → 1536 → 384 with exact GELU, see :class:`models.zoo.layers.TransformerBlock`); final LayerNorm,
the class token's features → Linear → 1000.
"""

from __future__ import annotations

import torch
from torch import nn

from models.zoo.layers import TransformerBlock

IMAGE = 224
PATCH = 16
DIM = 384
HEADS = 6
DEPTH = 4


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        tokens = (IMAGE // PATCH) ** 2
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)  # timm: trunc_normal(std=0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, DIM) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(DIM, HEADS) for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
