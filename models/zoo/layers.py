"""Building blocks shared by several zoo networks, written as in torchvision / timm.

* :class:`ConvBNAct` — Conv2d (no bias) → BatchNorm2d → activation, the unit of every CNN here;
* :class:`SqueezeExcitation` — Hu et al. 2018: ``x · gate(W2 · act(W1 · avgpool(x)))`` with 1x1 convs,
  the gate a Sigmoid (EfficientNet) or a Hardsigmoid (MobileNetV3);
* :class:`InvertedResidual` — MobileNetV2's block (expand 1x1 → depthwise kxk → project 1x1, linear
  bottleneck, residual Add when stride is 1 and the widths match), with an optional SE between depthwise and
  project (MobileNetV3, EfficientNet's MBConv);
* :class:`TransformerBlock` — a pre-LN ViT encoder layer, ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``,
  attention written out as timm does (one qkv Linear, reshape to heads, ``softmax(q kᵀ / √d) v``);
* :func:`resnet_stem` — ResNet's Conv 7x7/2 - BN - ReLU - MaxPool 3x3/2, shared by DenseNet and ResNeXt;
* :func:`make_divisible` — round a width to a multiple of 8 without losing more than 10 %.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90 % of it (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def resnet_stem(channels: int = 64) -> list[nn.Module]:
    """Conv 7x7/2 (3 → ``channels``, no bias) - BN - ReLU - MaxPool 3x3/2: 224x224 in, 56x56 out."""
    return [
        nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]


class ConvBNAct(nn.Sequential):
    """Conv2d(k, stride, groups, padding k//2, no bias) → BatchNorm2d → ``act`` (none if ``act`` is None)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: Activation | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """``x * gate(fc2(act(fc1(avgpool(x)))))``; fc1/fc2 are 1x1 convs with bias, ``c → squeeze → c``."""

    def __init__(self, channels: int, squeeze: int, act: Activation = nn.ReLU, gate: Activation = nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when ``expanded == c_in``) → depthwise kxk → [SE] → project 1x1 (no activation).

    ``se`` builds the squeeze-excitation for the expanded width (None: no SE). The block adds its input back
    when ``stride == 1`` and ``c_in == c_out``.
    """

    def __init__(
        self,
        c_in: int,
        expanded: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        act: Activation = nn.ReLU6,
        se: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvBNAct(c_in, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se is not None:
            layers.append(se(expanded))
        layers.append(ConvBNAct(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class Attention(nn.Module):
    """Multi-head self-attention on (B, T, C): ``proj(concat_h softmax(q_h k_hᵀ / √d) v_h)``, d = C/heads."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        y = attn.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """Pre-LN encoder layer: ``x + attn(LN(x))``, then ``x + fc2(act(fc1(LN(x))))``, hidden mlp_ratio·C."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, act: Activation = nn.GELU) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
