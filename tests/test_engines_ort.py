"""onnxruntime session options graphopt relies on."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from graphopt.engines.ort import session_options


def test_timed_side_by_side_sessions_do_not_spin_wait():
    quiet = session_options(threads=2, spinning=False)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.intra_op_num_threads == 2
    with pytest.raises(RuntimeError, match="does not have configuration"):  # deployment default: ORT's spin-wait
        session_options(threads=2).get_session_config_entry("session.intra_op.allow_spinning")


def test_priority_order_for_calibration_graphs():
    assert session_options(priority_order=True).execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert session_options().execution_order == ort.ExecutionOrder.DEFAULT
