"""``resnet18-224``: a ResNet-18 with seeded random weights, for speed and int8 / fp16 benchmarks.

Architecture (He et al. 2015, the torchvision layout): Conv 7x7/2 (64) - BN - ReLU - MaxPool 3x3/2, four
stages of two BasicBlocks each (64, 128, 256, 512 channels; stride 2 and a 1x1 Conv-BN shortcut where the
shape changes), global average pool, Gemm 512→1000. Input ``input`` (N, 3, 224, 224) float32, output
``logits`` (N, 1000). About 11.7 M parameters (47 MB).

Weights: Kaiming-normal convolutions and BN γ ~ U(0.5, 1.5), β ~ N(0, 0.1) from ``torch.manual_seed(0)``.
BN running statistics are then measured, not invented: the network runs in train mode (cumulative
average, ``momentum=None``) over 64 image crops that are neither calibration nor evaluation samples, so
every layer sees well-scaled activations, as in a trained network, and folding BN is a real change.

Data: ImageNet-normalised crops of scikit-image's bundled photographs (:mod:`models.images`), 64 calib and
32 eval, from different seeds; smooth random colour fields where scikit-image is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.artifacts import export_torch, npz_paths, write_npz
from models.images import imagenet_batch

STEM = "resnet18_224"
SEED = 0
N_CALIB = 64
N_EVAL = 32
N_BN_STATS = 64


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks = []
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def images(n: int, seed: int) -> np.ndarray:
    """(n, 3, 224, 224) float32 ImageNet-normalised image crops."""
    return imagenet_batch(n, 224, 224, seed)


def make_network() -> ResNet18:
    """The seeded ResNet-18 with measured BN running statistics, in eval mode."""
    torch.manual_seed(SEED)
    net = ResNet18()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
            m.momentum = None  # cumulative moving average over the statistics batches
    net.train()
    stats_images = torch.from_numpy(images(N_BN_STATS, seed=SEED + 100))
    with torch.no_grad():
        for batch in stats_images.split(16):
            net(batch)
    return net.eval()


def build(out_dir: Path) -> Path:
    path = Path(out_dir) / f"{STEM}.onnx"
    if path.exists():
        return path
    net = make_network()
    return export_torch(
        net,
        (torch.zeros(1, 3, 224, 224),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        doc_string="graphopt reference model resnet18-224: ResNet-18, seeded random weights, see models/README.md",
    )


def data(out_dir: Path) -> tuple[Path, Path]:
    calib_path, eval_path = npz_paths(out_dir, STEM)
    if not calib_path.exists():
        write_npz(calib_path, {"input": images(N_CALIB, seed=SEED + 1)})
    if not eval_path.exists():
        write_npz(eval_path, {"input": images(N_EVAL, seed=SEED + 2)})
    return calib_path, eval_path
