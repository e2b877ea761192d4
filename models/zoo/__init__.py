"""The architecture zoo: compact PyTorch re-implementations of the common vision architectures, one layer
pattern each, for checking that graphopt's passes handle what real exporters produce.

Every network is written here (no torchvision / timm) with the original's block structure and channel
widths but fewer blocks per stage, built with seeded random weights and exported with the TorchScript
exporter as users export (opset 17, dynamic batch, BatchNormalization folded into the preceding Conv where
one precedes it) — see :mod:`models.zoo.build`. This package's ``__init__`` is the catalog only and imports
nothing heavy; the registry (:mod:`models.registry`) turns each :class:`ZooSpec` into a ``ReferenceModel``.

==================  ======================================================================================
model               pattern it exercises
==================  ======================================================================================
resnet18-224        (models/resnet.py) BasicBlocks, BN, residual Add, 1x1 Conv-BN shortcut
densenet-224        dense blocks: Concat of all earlier features, BN after Concat, transition Conv 1x1 +
                    AvgPool
mobilenetv2-224     inverted residual: expand 1x1, depthwise 3x3, project 1x1, ReLU6 (Clip), residual Add
mobilenetv3-224     Hardswish, squeeze-excitation gated by HardSigmoid → Mul, 5x5 depthwise
efficientnet-224    MBConv with SiLU (Sigmoid·Mul) and Sigmoid-gated SE
resnext-224         bottlenecks with grouped 3x3 Conv (32 groups)
shufflenetv2-224    Split into halves, Concat, channel shuffle Reshape → Transpose → Reshape
convnext-224        depthwise 7x7, Transpose to channels-last, LayerNormalization, MatMul → GELU → MatMul,
                    layer scale Mul, Transpose back, residual Add
vit-224             patch Conv 16x16, class token Concat, position Add, multi-head attention, MLP, LayerNorm
mobilevit-256       inverted residuals, then conv → unfold 2x2 patches → transformer → fold → Concat → conv
vgg-224             plain Conv-BN-ReLU / MaxPool stack, Flatten → three Gemm
unet-256            strided conv encoder, bilinear ×2 Resize, Concat skips, 1x1 classifier, Resize to input
==================  ======================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooSpec:
    """One zoo model: its registry ``name``, the ``module:class`` of its torch network (built with no
    arguments), the square input ``size``, how outputs are compared (``check``) and a one-line description."""

    name: str
    network: str
    size: int
    check: str
    description: str

    @property
    def stem(self) -> str:
        return self.name.replace("-", "_")


ZOO: tuple[ZooSpec, ...] = (
    ZooSpec(
        "densenet-224",
        "models.zoo.densenet:DenseNet",
        224,
        "argmax-agreement",
        "DenseNet-121-style (dense blocks 4-6-8-6, growth 32, transitions), seeded random weights",
    ),
    ZooSpec(
        "mobilenetv2-224",
        "models.zoo.inverted_residual:MobileNetV2",
        224,
        "argmax-agreement",
        "MobileNetV2 (inverted residuals, ReLU6, 32..320 → 1280 ch), seeded random weights → 1000 logits",
    ),
    ZooSpec(
        "mobilenetv3-224",
        "models.zoo.inverted_residual:MobileNetV3Small",
        224,
        "argmax-agreement",
        "MobileNetV3-Small (Hardswish, SE with Hardsigmoid), seeded random weights → 1000 logits",
    ),
    ZooSpec(
        "efficientnet-224",
        "models.zoo.inverted_residual:EfficientNetB0",
        224,
        "argmax-agreement",
        "EfficientNet-B0-style MBConv (SiLU, Sigmoid SE), seeded random weights → 1000 logits",
    ),
    ZooSpec(
        "resnext-224",
        "models.zoo.resnext:ResNeXt",
        224,
        "argmax-agreement",
        "ResNeXt-50 32x4d-style (grouped 3x3 bottlenecks 1-2-2-1, 256..2048 ch), seeded random weights",
    ),
    ZooSpec(
        "shufflenetv2-224",
        "models.zoo.shufflenet:ShuffleNetV2",
        224,
        "argmax-agreement",
        "ShuffleNetV2 1.0x (split, Concat, channel shuffle; 116/232/464 ch), seeded random weights",
    ),
    ZooSpec(
        "convnext-224",
        "models.zoo.convnext:ConvNeXt",
        224,
        "argmax-agreement",
        "ConvNeXt-T-style (dw 7x7, channels-last LayerNorm + MLP, layer scale; 96..768 ch), random weights",
    ),
    ZooSpec(
        "vit-224",
        "models.zoo.vit:VisionTransformer",
        224,
        "argmax-agreement",
        "ViT-S/16 with 4 layers (384 wide, 6 heads, class token), seeded random weights → 1000 logits",
    ),
    ZooSpec(
        "mobilevit-256",
        "models.zoo.mobilevit:MobileViT",
        256,
        "argmax-agreement",
        "MobileViT-XS-style hybrid (MV2 blocks + transformers over 2x2 patches), seeded random weights",
    ),
    ZooSpec(
        "vgg-224",
        "models.zoo.vgg:VGG",
        224,
        "argmax-agreement",
        "VGG-style Conv-BN-ReLU stack (32..512 ch), Flatten → 3 Gemm, seeded random weights → 1000 logits",
    ),
    ZooSpec(
        "unet-256",
        "models.zoo.unet:UNet",
        256,
        "cosine",
        "U-Net-style segmentation (conv encoder 32..512, ×2 Resize + Concat skips), 256x256 → 21-class map",
    ),
)


def get_spec(name: str) -> ZooSpec:
    """The zoo entry called ``name`` (``KeyError`` when there is none)."""
    for spec in ZOO:
        if spec.name == name:
            return spec
    raise KeyError(name)
