"""Generate the bad-input corpus in ``tests/data/bad_inputs/`` (deterministic; rerun after editing).

Every file is something a user could hand to any onnxopt command; each must
get a one-line error and exit 2 -- except ``control_flow.onnx`` (If and Loop
subgraphs) and the valid models of :func:`valid_shape_cases` (scalar inputs, a
dimension fixed at 0), which every command must handle correctly.

    python tests/data/make_bad_inputs.py [OUT_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OUT = HERE / "bad_inputs"
OPSET = [helper.make_opsetid("", 13)]


def _value(name: str, shape: list[object] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape if shape is not None else ["N", 4])


def _model(nodes, inputs=None, outputs=None, inits=(), opset=None, ir_version=8, check=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs or [_value("x")], outputs or [_value("y")], list(inits))
    model = helper.make_model(graph, opset_imports=opset or OPSET, ir_version=ir_version)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def good_small() -> onnx.ModelProto:
    """A valid small model (the base of several corrupt ones)."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, inits=[w])


def control_flow() -> onnx.ModelProto:
    """Valid: an If choosing between two branches, and a Loop adding 1 three times."""
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_value("t")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_value("e")])
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _value("acc_in"),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _value("acc_out")],
    )
    inits = [
        one,
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branch"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Loop", ["trips", "true", "branch"], ["y"], body=body),
    ]
    return _model(nodes, inits=inits)


def cases() -> dict[str, bytes | None]:
    """File name -> bytes (None: a directory)."""
    rng = np.random.default_rng(0)
    good = good_small().SerializeToString()
    other = numpy_helper.from_array(np.arange(64, dtype=np.float32), "a_tensor_not_a_model")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    return {
        "zero_byte.onnx": b"",
        "truncated.onnx": good[: len(good) // 2],
        "random_bytes.onnx": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "other_message.onnx": other.SerializeToString(),
        "missing_initializer.onnx": _model(
            [helper.make_node("MatMul", ["x", "w_missing"], ["y"])], check=False
        ).SerializeToString(),
        "dangling_input.onnx": _model(
            [helper.make_node("Add", ["x", "produced_by_nothing"], ["y"])], check=False
        ).SerializeToString(),
        "cyclic.onnx": _model(
            [
                helper.make_node("Add", ["x", "b"], ["a"]),
                helper.make_node("Relu", ["a"], ["b"]),
                helper.make_node("Identity", ["a"], ["y"]),
            ],
            check=False,
        ).SerializeToString(),
        "duplicate_outputs.onnx": _model(
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])], check=False
        ).SerializeToString(),
        "unknown_domain.onnx": _model(
            [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
            opset=[*OPSET, helper.make_opsetid("com.example", 1)],
            check=False,
        ).SerializeToString(),
        "opset7.onnx": _model(relu, opset=[helper.make_opsetid("", 7)], ir_version=3).SerializeToString(),
        "ir_too_new.onnx": _model(relu, ir_version=onnx.IR_VERSION + 1, check=False).SerializeToString(),
        "external_missing.onnx": _external_missing(w),
        "control_flow.onnx": control_flow().SerializeToString(),
        "a_directory.onnx": None,
        **validation_cases(),
        **valid_shape_cases(),
    }


def _external_missing(w: onnx.TensorProto) -> bytes:
    """A model whose weight lives in ``external_missing.onnx.data``, which is not there."""
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], inits=[w])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "external_missing.onnx.data"), ("offset", "0"), ("length", "64")):
        tensor.external_data.add(key=key, value=value)
    return model.SerializeToString()


# --- models the checker and onnxruntime's session creation accept, refused by onnxopt's one validation (issue 33)


def validation_cases() -> dict[str, bytes]:
    """Corrupt data or attributes that only fail when run, and a type onnxruntime has no kernel for."""
    return {
        "conv_kernel_mismatch.onnx": _conv_kernel_mismatch().SerializeToString(),
        "raw_data_too_long.onnx": _raw_data_too_long().SerializeToString(),
        "typed_data_too_long.onnx": _typed_data_too_long().SerializeToString(),
        "no_kernel.onnx": _no_kernel().SerializeToString(),
        "no_outputs.onnx": _no_outputs().SerializeToString(),
    }


def _conv_kernel_mismatch() -> onnx.ModelProto:
    """A Conv whose kernel_shape (5x5) disagrees with its 3x3 weight: onnxruntime fails only when it runs."""
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[5, 5])
    return _model([conv], inputs=[_value("x", [1, 1, 8, 8])], outputs=[_value("y", [1, 2, 4, 4])], inits=[w])


def _raw_data_too_long() -> onnx.ModelProto:
    """The 4x4 float weight's raw_data holds 80 bytes where its dims say 64 (the checker accepts it)."""
    model = good_small()
    model.graph.initializer[0].raw_data += bytes(16)
    return model


def _typed_data_too_long() -> onnx.ModelProto:
    """The 4x4 float weight holds 20 values in float_data where its dims say 16."""
    model = good_small()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.float_data.extend([0.5] * 20)
    return model


def _no_outputs() -> onnx.ModelProto:
    """A graph that declares no output: the checker accepts it, and onnxruntime can run nothing."""
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    del model.graph.output[:]
    return model


def _no_kernel() -> onnx.ModelProto:
    """Relu on int32 at opset 13: the (non-full) checker accepts it, onnxruntime has no kernel for the type."""
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["N", 4])  # noqa: E731
    return _model([helper.make_node("Relu", ["x"], ["y"])], inputs=[value("x")], outputs=[value("y")], check=False)


# --- valid models with unusual input shapes, which every command must run (issue 33: scalars, a 0 dimension)


def valid_shape_cases() -> dict[str, bytes]:
    """A scalar first input (``y = s * x``; an If on a scalar condition), and an input fixed at ``[0, 4]``."""
    return {
        "scalar_mul.onnx": _scalar_mul().SerializeToString(),
        "scalar_if.onnx": _scalar_if().SerializeToString(),
        "zero_batch.onnx": _zero_batch().SerializeToString(),
    }


def _scalar_weight() -> onnx.TensorProto:
    return numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")


def _scalar_mul() -> onnx.ModelProto:
    """``y = (s * x) @ w`` with a scalar (rank-0) ``s`` as the first input."""
    nodes = [helper.make_node("Mul", ["s", "x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    return _model(nodes, inputs=[_value("s", []), _value("x")], inits=[_scalar_weight()])


def _scalar_if() -> onnx.ModelProto:
    """``y = x @ w if c else -x`` with a scalar bool ``c`` as the first input."""
    then_graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [], [_value("t")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_value("e")])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)
    condition = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    return _model([node], inputs=[condition, _value("x")], inits=[_scalar_weight()])


def _zero_batch() -> onnx.ModelProto:
    """``relu(x @ w)`` whose input and output are fixed at ``[0, 4]``: runnable at a size ``--input-shape`` gives."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return _model(nodes, inputs=[_value("x", [0, 4])], outputs=[_value("y", [0, 4])], inits=[_scalar_weight()])


def write(out: Path = OUT) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, data in cases().items():
        if data is None:
            (out / name).mkdir()
            (out / name / ".keep").write_text("a directory where a model file is expected\n")
        else:
            (out / name).write_bytes(data)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
