"""A U-Net-style segmentation network (Ronneberger et al. 2015), strided conv encoder, 256x256 → 21 classes.

Encoder: Conv 3x3/2 (32) - BN - ReLU at 1/2 resolution, then four levels at 1/4 .. 1/32 of 64, 128, 256,
512 channels, each ``Conv 3x3/2 - BN - ReLU - Conv 3x3 - BN - ReLU``. Decoder, from the deepest level up:
bilinear ×2 upsampling (``nn.Upsample`` → ``Resize`` with constant scales), Concat with the encoder feature
of that resolution (the skip), ``Conv 3x3 - BN - ReLU`` to the skip's width; a 1x1 Conv classifier (21
classes, as Pascal VOC) at 1/2 resolution; a final bilinear resize to the input's size (``F.interpolate``
with ``size`` → ``Resize`` with sizes computed from ``Shape``), as torchvision's segmentation heads do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.zoo.layers import ConvBNAct

WIDTHS = (32, 64, 128, 256, 512)
NUM_CLASSES = 21


class UNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([ConvBNAct(3, WIDTHS[0], 3, 2)])
        for c_in, c_out in zip(WIDTHS, WIDTHS[1:]):
            self.encoder.append(nn.Sequential(ConvBNAct(c_in, c_out, 3, 2), ConvBNAct(c_out, c_out, 3)))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoder = nn.ModuleList(
            ConvBNAct(deep + skip, skip, 3) for deep, skip in zip(WIDTHS[:0:-1], WIDTHS[-2::-1])
        )
        self.classifier = nn.Conv2d(WIDTHS[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        y = x
        for stage in self.encoder:
            y = stage(y)
            skips.append(y)
        y = skips.pop()
        for block in self.decoder:
            y = block(torch.cat((self.up(y), skips.pop()), dim=1))
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
