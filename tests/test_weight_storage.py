"""Int8 weight storage for float compute: Cast+Mul decoders that onnxruntime folds when it creates the session."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes._graph_edit import NameSource
from onnxopt.passes.quantize.weight_storage import int8_per_channel, store_weights_int8


def _conv_lstm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    conv_w[5] *= 40.0  # one channel with a much larger range: per-channel scales keep the others fine
    lstm_w = (0.1 * rng.standard_normal((1, 4 * 24, 32))).astype(np.float32)
    lstm_r = (0.1 * rng.standard_normal((1, 4 * 24, 24))).astype(np.float32)
    small = rng.standard_normal((2, 32, 1, 1)).astype(np.float32)  # under MIN_ELEMENTS: stays float
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Conv", ["c", "small"], ["side"], name="side_conv"),
        helper.make_node("ReduceMean", ["c"], ["pooled"], axes=[2], keepdims=0),  # [1, 32, 8]
        helper.make_node("Transpose", ["pooled"], ["seq"], perm=[2, 0, 1]),  # [8, 1, 32]
        helper.make_node("LSTM", ["seq", "lstm_w", "lstm_r"], ["y"], hidden_size=24, name="lstm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 1, 1, 24]),
            helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 2, 8, 8]),
        ],
        [numpy_helper.from_array(a, n) for a, n in [(conv_w, "conv_w"), (lstm_w, "lstm_w"), (lstm_r, "lstm_r"),
                                                     (small, "small")]],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _stored(proto: onnx.ModelProto, keep_exact: set[str] = frozenset()) -> tuple[onnx.ModelProto, list[str]]:
    model = ir.serde.deserialize_model(proto)
    stored = store_weights_int8(model.graph, NameSource(model), set(keep_exact))
    return ir.serde.serialize_model(model), stored


def test_storage_is_folded_by_onnxruntime_and_equals_rounded_weights(tmp_path) -> None:
    original = _conv_lstm_model()
    stored_model, stored = _stored(original)
    onnx.checker.check_model(stored_model)
    assert sorted(stored) == ["conv_w", "lstm_r", "lstm_w"]  # "small" is under the size floor
    assert stored_model.ByteSize() < 0.4 * original.ByteSize()
    # the reference: the same model with each weight rounded the same way, stored as float
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    for tensor in reference.graph.initializer:
        if tensor.name in stored:
            array = numpy_helper.to_array(tensor)
            q, scale = int8_per_channel(array, 0 if tensor.name == "conv_w" else 1)
            tensor.CopyFrom(numpy_helper.from_array(q.astype(np.float32) * scale, tensor.name))
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    got = ort.InferenceSession(stored_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    same = ort.SessionOptions()
    same.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # the same kernels on both sides
    want = ort.InferenceSession(reference.SerializeToString(), same, providers=["CPUExecutionProvider"])
    for a, b in zip(got.run(None, {"x": x}), want.run(None, {"x": x}), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: Cast*scale is what the rounded float weight holds
    running = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not any(n.op_type in ("Cast", "Mul") for n in running.graph.node)  # decoded once, at creation


def test_storage_leaves_exact_nodes_and_shared_mixed_reads_alone() -> None:
    original = _conv_lstm_model()
    _, stored = _stored(original, keep_exact={"conv"})
    assert "conv_w" not in stored and "lstm_w" in stored
    # a weight also read as data (a Mul here) is not a weight only: one rounding cannot serve both
    shared = onnx.ModelProto()
    shared.CopyFrom(original)
    shared.graph.node.append(helper.make_node("Mul", ["conv_w", "conv_w"], ["sq"]))
    shared.graph.output.append(helper.make_tensor_value_info("sq", TensorProto.FLOAT, [32, 16, 3, 3]))
    _, stored = _stored(shared)
    assert "conv_w" not in stored


def test_per_channel_scales_follow_each_channel() -> None:
    weight = np.stack([np.linspace(-1, 1, 27), np.linspace(-100, 100, 27)]).reshape(2, 3, 3, 3).astype(np.float32)
    q, scale = int8_per_channel(weight, 0)
    assert q.dtype == np.int8 and scale.shape == (2, 1, 1, 1)
    assert np.abs(q).max() == 127
    np.testing.assert_allclose(q * scale, weight, atol=float(scale.max()) / 2 + 1e-6)
    assert np.abs(q[0] * scale[0] - weight[0]).max() <= 1 / 127 / 2 + 1e-7  # the small channel keeps its resolution


def test_a_table_gathered_by_rows_is_stored_per_row_and_folded(tmp_path) -> None:
    """A Gather of rows (an embedding table; the exact head rows ``low-rank`` keeps) stores one scale per row."""
    rng = np.random.default_rng(2)
    table = rng.standard_normal((300, 16)).astype(np.float32)
    table[7] *= 50.0  # per-row scales keep the other rows fine
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0, name="lookup")],
        "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 16])],
        [numpy_helper.from_array(table, "table")],
    )
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    stored_model, stored = _stored(original)
    assert stored == ["table"] and stored_model.ByteSize() < 0.35 * original.ByteSize()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(stored_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rows = np.array([0, 7, 8, 150, 299], np.int64)
    (got,) = session.run(None, {"i": rows})
    q, scale = int8_per_channel(table, 0)
    np.testing.assert_array_equal(got, (q.astype(np.float32) * scale)[rows])
    assert np.abs(got[2] - table[8]).max() < 0.03  # row 8 keeps its own scale, not row 7's
    running = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not any(n.op_type in ("Cast", "Mul") for n in running.graph.node)
