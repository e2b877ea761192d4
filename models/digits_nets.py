"""The two digits networks (torch). Imported only by :mod:`models.build_digits` when it trains."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) → (N, 10) logits.

    stem Conv-BN-ReLU (32 ch, 8x8) → residual block (Conv-BN-ReLU, Conv-BN, Add, ReLU) →
    Conv-BN-ReLU stride 2 (64 ch, 4x4) → Flatten → Gemm 1024→64 → ReLU → Gemm 64→10.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(1, 32)
        self.block_a = _conv_bn(32, 32)
        self.block_b = _conv_bn(32, 32)
        self.down = _conv_bn(32, 64, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        y = self.block_b(self.relu(self.block_a(x)))
        x = self.relu(x + y)
        x = self.relu(self.down(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


class DigitsMLP(nn.Module):
    """(N, 64) → (N, 10) logits: Gemm 64→128 → ReLU → Gemm 128→64 → ReLU → Gemm 64→10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
