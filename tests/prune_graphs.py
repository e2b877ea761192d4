"""Tiny graphs and numpy reference ops for the pruning tests.

The channel tests make the channels they expect to be removed weak (their weights scaled by
``WEAK``) in every layer of the group, prune with ``amount = len(weak) / channels``, and compare
onnxruntime on the pruned model with a numpy forward pass of the original weights from which the
same channels were deleted by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

WEAK = 1e-3


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def weights(shape, seed: int, scale: float = 0.5) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def weaken(array: np.ndarray, axis: int, channels) -> np.ndarray:
    """``array`` with the slices ``channels`` along ``axis`` scaled by :data:`WEAK`."""
    out = array.copy()
    index = [slice(None)] * out.ndim
    index[axis] = list(channels)
    out[tuple(index)] *= WEAK
    return out


def drop(array: np.ndarray, axis: int, channels) -> np.ndarray:
    return np.delete(array, list(channels), axis=axis)


def model(nodes, inputs, outputs, initializers: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def run(proto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if not isinstance(proto, onnx.ModelProto):
        import onnx_ir as ir

        proto = ir.to_proto(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ---------------------------------------------------------------- numpy reference ops


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, pad: int = 0, group: int = 1) -> np.ndarray:
    """Stride-1 2-D convolution, NCHW, ``w`` of shape ``(O, C/group, k, k)``."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    og = o // group
    out = np.zeros((n, o, ho, wo))
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        patches = np.stack([xs[:, :, i:i + ho, j:j + wo] for i in range(k) for j in range(k)], axis=2)
        kernel = w[g * og:(g + 1) * og].reshape(og, cg, k * k).astype(np.float64)
        out[:, g * og:(g + 1) * og] = np.einsum("nckhw,ock->nohw", patches, kernel)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def batch_norm(x, scale, bias, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


def layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias
