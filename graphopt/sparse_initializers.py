"""Storing pruned weights as ONNX sparse initializers (``GraphProto.sparse_initializer``).

A sparse initializer keeps only the non-zero values and their positions: a ``SparseTensorProto``
whose ``values`` hold the non-zeros and whose ``indices`` hold their row-major (linearised)
positions, ascending. ONNX requires ``int64`` indices, so a value costs 4 + 8 bytes instead of 4:
storing sparse only pays below 1/3 density (above 67 % zeros); :func:`to_sparse` keeps a weight
dense when the sparse form would not be smaller. onnxruntime expands sparse initializers into dense
tensors when it loads the model, so kernels and speed are unchanged; the gain is the file size.

onnx_ir does not represent sparse initializers, so inside graphopt a model stays dense: a pass asks
for sparse storage by listing initializer names under :data:`STORE_SPARSE_KEY` in
``metadata_props``, :func:`graphopt.model_io.save_model` converts them when writing, and
:func:`graphopt.model_io.load_proto` turns sparse initializers back into dense ones when reading.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
from onnx import numpy_helper

STORE_SPARSE_KEY = "graphopt.storage.sparse_initializers"
"""``metadata_props`` key: JSON list of initializer names to write as sparse initializers."""

INDEX_BYTES = 8


@dataclasses.dataclass
class SparseStorage:
    """What :func:`to_sparse` did."""

    stored: list[str] = dataclasses.field(default_factory=list)
    kept_dense: list[str] = dataclasses.field(default_factory=list)
    """Listed weights whose sparse form would not be smaller (or that are not float)."""
    dense_bytes: int = 0
    sparse_bytes: int = 0


def sparse_bytes(array: np.ndarray) -> int:
    """Bytes of ``array`` as a sparse initializer (values + int64 indices)."""
    nonzero = int(np.count_nonzero(array))
    return nonzero * (array.dtype.itemsize + INDEX_BYTES)


def requested_names(proto: onnx.ModelProto) -> list[str]:
    for entry in proto.metadata_props:
        if entry.key == STORE_SPARSE_KEY:
            try:
                names = json.loads(entry.value)
            except ValueError:
                return []
            return [str(n) for n in names] if isinstance(names, list) else []
    return []


def to_sparse(proto: onnx.ModelProto, names: list[str] | None = None) -> SparseStorage:
    """Move the listed float initializers of the main graph (default: those named in the metadata)
    to ``sparse_initializer``, in place, where that makes them smaller."""
    wanted = set(requested_names(proto) if names is None else names)
    report = SparseStorage()
    if not wanted:
        return report
    keep: list[onnx.TensorProto] = []
    for tensor in proto.graph.initializer:
        if tensor.name not in wanted:
            keep.append(tensor)
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind != "f" or sparse_bytes(array) >= array.nbytes:
            report.kept_dense.append(tensor.name)
            keep.append(tensor)
            continue
        flat = array.reshape(-1)
        positions = np.flatnonzero(flat)
        values = numpy_helper.from_array(flat[positions], tensor.name)
        indices = numpy_helper.from_array(positions.astype(np.int64), f"{tensor.name}_indices")
        proto.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(array.shape)))
        report.stored.append(tensor.name)
        report.dense_bytes += array.nbytes
        report.sparse_bytes += sparse_bytes(array)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return report


def to_dense(proto: onnx.ModelProto) -> int:
    """Turn every sparse initializer of the main graph into a dense one, in place; returns how many."""
    count = 0
    for sparse in proto.graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        dims = tuple(int(d) for d in sparse.dims)
        dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
        dense[indices] = values
        proto.graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), sparse.values.name))
        count += 1
    del proto.graph.sparse_initializer[:]
    return count
