"""Build a zoo model: seeded random weights, measured BatchNorm statistics, export as users export, data.

Weights (``torch.manual_seed(0)`` before the network is constructed, so each model is reproducible):

* Conv: Kaiming-normal (fan-out, ReLU gain, torchvision's rule); Conv biases ~ N(0, 0.1);
* BatchNorm and LayerNorm: γ ~ U(0.5, 1.5), β ~ N(0, 0.1);
* Linear: PyTorch's default init; model-specific parameters (class token, position embedding, layer scale)
  are drawn by the network itself;
* BatchNorm running statistics are measured, as in :mod:`models.resnet`: 16 image crops (neither calib nor
  eval) run through the network in train mode with a cumulative average, so every layer sees well-scaled
  activations and BN is no identity.

Export: :func:`models.artifacts.export_torch` with BatchNorm folding left to the exporter (the default
``TrainingMode.EVAL`` of ``torch.onnx.export``): a BN right after a Conv becomes part of that Conv's weights
and bias, a BN elsewhere (DenseNet's BN after a Concat) stays a ``BatchNormalization`` node. Input ``input``
(N, 3, S, S), output ``logits``, batch dimension ``N`` dynamic, opset 17.

Data: ImageNet-normalised crops of scikit-image's sample photographs (:func:`models.images.imagenet_batch`),
16 calib and 16 eval, no labels (random weights: outputs are compared with the fp32 model's).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from models.artifacts import export_torch, npz_paths, write_npz
from models.images import imagenet_batch
from models.zoo import ZooSpec, get_spec

SEED = 0
N_CALIB = 16
N_EVAL = 16
N_BN_STATS = 16
INPUT = "input"
OUTPUT = "logits"


def images(spec: ZooSpec, n: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) float32 ImageNet-normalised crops for ``spec``."""
    return torch.from_numpy(imagenet_batch(n, spec.size, spec.size, seed))


def init_weights(net: nn.Module) -> None:
    """Draw Conv, BatchNorm and LayerNorm parameters by the rules in the module docstring."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)


def measure_batchnorm(net: nn.Module, batch: torch.Tensor) -> None:
    """Set every BatchNorm's running mean / variance to the statistics of ``batch`` (train-mode forward)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the statistics batches
    net.train()
    with torch.no_grad():
        for chunk in batch.split(8):
            net(chunk)


def make_network(spec: ZooSpec | str, bn_images: int | None = None) -> nn.Module:
    """The seeded network of ``spec`` (a :class:`ZooSpec` or its name), in eval mode, with BN statistics
    measured on ``bn_images`` crops (the built models use :data:`N_BN_STATS`; tests take fewer)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    module_name, class_name = spec.network.split(":")
    torch.manual_seed(SEED)
    net = getattr(importlib.import_module(module_name), class_name)()
    init_weights(net)
    measure_batchnorm(net, images(spec, N_BN_STATS if bn_images is None else bn_images, seed=SEED + 100))
    return net.eval()


def export(net: nn.Module, spec: ZooSpec, path: Path) -> Path:
    """Export eval-mode ``net`` to ``path`` as users do (BN folded by the exporter, dynamic batch ``N``)."""
    return export_torch(
        net,
        (torch.zeros(1, 3, spec.size, spec.size),),
        path,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}},
        doc_string=f"graphopt reference model {spec.name}: seeded random weights, see models/zoo/",
        keep_batchnorm=False,
    )


def build(name: str, out_dir: Path) -> Path:
    """``out_dir/<stem>.onnx`` of zoo model ``name``, built when missing."""
    spec = get_spec(name)
    path = Path(out_dir) / f"{spec.stem}.onnx"
    if path.exists():
        return path
    return export(make_network(spec), spec, path)


def data(name: str, out_dir: Path) -> tuple[Path, Path]:
    """``(calib.npz, eval.npz)`` of zoo model ``name`` in ``out_dir``, written when missing."""
    spec = get_spec(name)
    calib_path, eval_path = npz_paths(out_dir, spec.stem)
    if not calib_path.exists():
        write_npz(calib_path, {INPUT: images(spec, N_CALIB, seed=SEED + 1).numpy()})
    if not eval_path.exists():
        write_npz(eval_path, {INPUT: images(spec, N_EVAL, seed=SEED + 2).numpy()})
    return calib_path, eval_path
