"""MACs per sample: recurrent layers are counted, and shapes inference cannot follow are measured."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxopt.inspection import count_macs
from onnxopt.model_stats import estimate_macs

STEPS, BATCH, FEATURES, HIDDEN, CLASSES = 7, 1, 6, 5, 11


def _recognizer(op: str, gates: int, *, symbolic: bool) -> onnx.ModelProto:
    """A CRNN tail: ``x [N, F, T]`` -> ``[T, N, F]`` -> bidirectional ``op`` -> ``[T*N, 2H]`` -> Gemm to classes. With
    ``symbolic`` the Reshape target is computed from the input's shape, which inference cannot follow."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, gates * HIDDEN, FEATURES), dtype=np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((2, gates * HIDDEN, HIDDEN), dtype=np.float32), "R")
    head = numpy_helper.from_array(rng.standard_normal((CLASSES, 2 * HIDDEN), dtype=np.float32), "head")
    nodes = [
        helper.make_node("Transpose", ["x"], ["seq"], perm=[2, 0, 1]),
        helper.make_node(op, ["seq", "W", "R"], ["y"], hidden_size=HIDDEN, direction="bidirectional", name="rnn"),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),  # [T, N, 2, H]
    ]
    inits = [w, r, head]
    if symbolic:
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Max", ["shape", "shape"], ["shape_i"]),  # no data propagation through Max
            helper.make_node("Gather", ["shape_i", "time_axis"], ["steps"], axis=0),
            helper.make_node("Unsqueeze", ["steps", "axes"], ["steps1"]),
            helper.make_node("Concat", ["steps1", "width"], ["target"], axis=0),
        ]
        inits += [
            numpy_helper.from_array(np.array(2, np.int64), "time_axis"),
            numpy_helper.from_array(np.array([0], np.int64), "axes"),
            numpy_helper.from_array(np.array([2 * HIDDEN], np.int64), "width"),
        ]
    else:
        inits.append(numpy_helper.from_array(np.array([-1, 2 * HIDDEN], np.int64), "target"))
    nodes += [
        helper.make_node("Reshape", ["yt", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "head"], ["logits"], transB=1, name="classifier"),
    ]
    steps = "T" if symbolic else STEPS
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, FEATURES, steps])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _expected(gates: int) -> int:
    recurrent = STEPS * BATCH * 2 * gates * HIDDEN * (FEATURES + HIDDEN)
    return recurrent + STEPS * BATCH * CLASSES * 2 * HIDDEN


def test_lstm_gru_and_rnn_are_counted() -> None:
    for op, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        macs, unknown = estimate_macs(ir.from_proto(_recognizer(op, gates, symbolic=False)))
        assert unknown == [] and macs == _expected(gates), op


def test_shapes_inference_cannot_follow_are_measured() -> None:
    model = ir.from_proto(_recognizer("LSTM", 4, symbolic=True))
    shapes = {"x": (BATCH, FEATURES, STEPS)}
    _, unknown = estimate_macs(model, shapes)
    assert "classifier" in unknown  # the Reshape target comes from the input's shape
    macs, unknown = count_macs(model, shapes)
    assert unknown == [] and macs == _expected(4)
