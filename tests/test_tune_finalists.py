"""Which feasible trials tune times: the Pareto front counts the MACs onnxruntime runs in int8 kernels, so an
int8-compute model is not beaten, untimed, by weight storage of the same size and MACs that is a little more
accurate -- while a less accurate model with nothing in int8 is.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from onnxopt.tune.run import _finalists, _int8_macs
from onnxopt.tune.trial import TrialRecord

CONV_MACS = 8 * 3 * 3 * 3 * 16 * 16  # out channels x in channels x 3 x 3 x output positions


def _conv_model(path: Path, activations: int | None, seed: int = 0) -> Path:
    """x -> Conv (int8 weights behind a DequantizeLinear) -> y; with ``activations`` (an 8-bit type), the Conv's
    input and output pass through QuantizeLinear -> DequantizeLinear of that type (a QDQ group)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_z"),
    ]
    nodes = [oh.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_DQ", axis=0)]
    x, y = "x", "y"
    if activations is not None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(activations)
        for name in ("x", "y"):
            inits += [
                numpy_helper.from_array(np.float32(0.05), f"{name}_s"),
                numpy_helper.from_array(np.zeros((), dtype), f"{name}_z"),
            ]
        nodes += [
            oh.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="x_Q"),
            oh.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], name="x_DQ"),
        ]
        x, y = "x_dq", "conv_out"
    nodes.append(oh.make_node("Conv", [x, "w"], [y], name="conv", pads=[1, 1, 1, 1]))
    if activations is not None:
        nodes += [
            oh.make_node("QuantizeLinear", ["conv_out", "y_s", "y_z"], ["y_q"], name="y_Q"),
            oh.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["y"], name="y_DQ"),
        ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 19)]), path)
    return path


def _record(name: str, model: Path, drop: float) -> TrialRecord:
    """A feasible trial of that model; every one the same size and MACs, so only drop and int8 MACs differ."""
    return TrialRecord(
        name, "spec", {}, "ok", metric="accuracy", baseline=1.0, drop=drop, size_bytes=1000, macs=CONV_MACS,
        model=str(model),
    )  # fmt: skip


def test_int8_compute_stays_a_finalist_beside_more_accurate_weight_storage(tmp_path) -> None:
    storage = _conv_model(tmp_path / "storage.onnx", None)
    uint8 = _conv_model(tmp_path / "uint8.onnx", TensorProto.UINT8)
    other = _conv_model(tmp_path / "other.onnx", None, seed=1)  # other weights, stored alike
    assert _int8_macs(storage, []) == 0 and _int8_macs(other, []) == 0
    assert _int8_macs(uint8, []) == CONV_MACS  # onnxruntime runs the Conv as QLinearConv

    trials = [_record("trial 1", storage, 0.0), _record("trial 2", uint8, 0.005), _record("trial 3", other, 0.005)]
    chosen = _finalists(types.SimpleNamespace(trials=trials, notes=[]), max_drop=0.01)
    # weight storage (most accurate) and int8 compute (fewest float MACs) are both timed; a less accurate model
    # with as many float MACs is beaten by weight storage on every measure
    assert [t.name for t in chosen] == ["trial 2", "trial 1"]
    assert [t.int8_macs for t in trials] == [0, CONV_MACS, 0]
