"""Inverted-residual networks, torchvision's layouts: MobileNetV2 (Sandler et al. 2018), MobileNetV3-Small
(Howard et al. 2019) and EfficientNet-B0 (Tan & Le 2019).

**MobileNetV2** — Conv 3x3/2 (32) - BN - ReLU6, then inverted residuals (expand 1x1 - depthwise 3x3 -
project 1x1, ReLU6, a residual Add where stride is 1 and widths match) with the paper's (t, c, s) table and
two blocks per stage instead of up to four, Conv 1x1 (1280) - BN - ReLU6, global pool, Linear → 1000.

**MobileNetV3-Small** — the full torchvision table: Conv 3x3/2 (16) - BN - Hardswish, eleven bneck blocks
with ReLU or Hardswish and squeeze-excitation (avgpool - Conv 1x1 - ReLU - Conv 1x1 - Hardsigmoid - Mul),
Conv 1x1 (576) - BN - Hardswish, global pool, Linear 1024 - Hardswish - Linear → 1000.

**EfficientNet-B0** — Conv 3x3/2 (32) - BN - SiLU, MBConv blocks (the B0 table with at most two blocks per
stage instead of up to four): expand 1x1 - depthwise 3x3/5x5 - SE (squeeze to a quarter of the block's input
width, SiLU, Sigmoid gate) - project 1x1, SiLU throughout; Conv 1x1 (1280) - BN - SiLU, global pool,
Linear → 1000. SiLU exports as ``Sigmoid`` + ``Mul``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from models.zoo.layers import ConvBNAct, InvertedResidual, SqueezeExcitation, make_divisible

#: (expansion t, output channels c, blocks n, first stride s); the paper's n is (1, 2, 3, 4, 3, 3, 1).
V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
    (6, 320, 1, 1),
)

#: (kernel, expanded, out, SE, activation "RE" | "HS", stride) — torchvision's mobilenet_v3_small.
V3_SMALL = (
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.ReLU6)]
        c_in = 32
        for t, c, n, s in V2_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_in * t, c, 3, s if i == 0 else 1, act=nn.ReLU6))
                c_in = c
        layers += [ConvBNAct(c_in, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _v3_se(channels: int) -> SqueezeExcitation:
    return SqueezeExcitation(channels, make_divisible(channels // 4), act=nn.ReLU, gate=nn.Hardsigmoid)


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish)]
        c_in = 16
        for kernel, expanded, c_out, se, act, stride in V3_SMALL:
            activation = nn.ReLU if act == "RE" else nn.Hardswish
            layers.append(
                InvertedResidual(
                    c_in, expanded, c_out, kernel, stride, act=activation, se=_v3_se if se else None
                )
            )
            c_in = c_out
        layers += [ConvBNAct(c_in, 576, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


#: (expansion, kernel, first stride, output channels, blocks) — EfficientNet-B0 with blocks (1, 2, 3, 3, 4, 1)
#: cut to at most two.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 2),
    (6, 5, 1, 112, 2),
    (6, 5, 2, 192, 2),
    (6, 3, 1, 320, 1),
)


def _b0_se(squeeze: int) -> partial:
    """EfficientNet's SE for a block whose *input* width is ``4 · squeeze``."""
    return partial(SqueezeExcitation, squeeze=squeeze, act=nn.SiLU, gate=nn.Sigmoid)


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.SiLU)]
        c_in = 32
        for t, kernel, stride, c_out, n in B0_STAGES:
            for i in range(n):
                se = _b0_se(max(1, c_in // 4))
                layers.append(
                    InvertedResidual(c_in, c_in * t, c_out, kernel, stride if i == 0 else 1, nn.SiLU, se)
                )
                c_in = c_out
        layers += [ConvBNAct(c_in, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
