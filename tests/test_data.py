"""Data files: formats, batching and the checks against the model's inputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.data import (
    PROBE_FEATURE_DIM,
    PROBE_OTHER_DIM,
    DataSet,
    InputSpec,
    input_specs,
    load_data,
    probe_data,
)
from graphopt.errors import InputError
from tests.conftest import conv_bn_model, save_data


def specs(batch="N"):
    return input_specs(ir.from_proto(conv_bn_model(batch=batch)))


def test_npz_with_labels(tmp_path):
    data = load_data(save_data(tmp_path / "d.npz", n=10))
    assert len(data) == 10 and data.labels.shape == (10,)
    data.check_against(specs(), "evaluation")
    batches = list(data.batches(4))
    assert [len(b["input"]) for b in batches] == [4, 4, 2]


def test_folder_of_npz_is_concatenated(tmp_path):
    save_data(tmp_path / "a.npz", n=3, seed=1)
    save_data(tmp_path / "b.npz", n=5, seed=2)
    data = load_data(tmp_path)
    assert len(data) == 8 and len(data.labels) == 8
    np.testing.assert_array_equal(data.inputs["input"][:3], load_data(tmp_path / "a.npz").inputs["input"])


def test_folder_of_npy(tmp_path):
    np.save(tmp_path / "input.npy", np.zeros((6, 1, 8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(6))
    data = load_data(tmp_path)
    assert len(data) == 6 and data.labels is not None


def test_sample_counts_must_agree(tmp_path):
    np.savez(tmp_path / "d.npz", input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(InputError, match="disagree on the number of samples"):
        load_data(tmp_path / "d.npz").check_against(specs(), "evaluation")


def test_static_batch_sets_batch_size():
    data = DataSet({"input": np.zeros((5, 1, 8, 8), np.float32)})
    assert data.batch_size_for(specs(batch=1)) == 1
    assert data.batch_size_for(specs()) == 16


def test_float_labels_refused():
    data = DataSet({"input": np.zeros((2, 1, 8, 8), np.float32)}, labels=np.zeros(2, np.float32))
    with pytest.raises(InputError, match="'labels' must be integers"):
        data.check_against(specs(), "evaluation")


def test_probe_data_fits_the_model():
    data = probe_data(specs(), count=4)
    assert data.synthetic and data.inputs["input"].shape == (4, 1, 8, 8)
    data.check_against(specs(), "probe")


def test_fingerprint_follows_content():
    a = DataSet({"input": np.zeros((2, 1, 8, 8), np.float32)})
    b = DataSet({"input": np.ones((2, 1, 8, 8), np.float32)})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == DataSet({"input": np.zeros((2, 1, 8, 8), np.float32)}).fingerprint()


def test_probe_data_gives_dynamic_image_dims_a_size_cnns_can_downsample():
    image = InputSpec("image", np.dtype(np.float32), ("N", 3, "H", "W"))
    tokens = InputSpec("ids", np.dtype(np.int64), ("N", "seq"))
    data = probe_data([image, tokens], count=2)
    assert not data.stacked
    assert data.inputs["image"].shape == (2, 3, PROBE_FEATURE_DIM, PROBE_FEATURE_DIM)
    assert PROBE_FEATURE_DIM % 32 == 0
    assert data.inputs["ids"].shape == (2, PROBE_OTHER_DIM)
