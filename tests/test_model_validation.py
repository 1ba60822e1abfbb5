"""The one validation every command runs (onnxopt.io.validation), its structural checks, and deep graphs.

The bad-input corpus (test_bad_input_corpus.py) runs every command on the refused files; here: what each check
says, the session it hands back, and chains deep enough that a quadratic step would not finish.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io
from onnxopt.cli import main
from onnxopt.errors import ModelLoadError, UnsupportedModelError
from onnxopt.io.model_checks import structural_problem, tensor_problem

CORPUS = Path(__file__).parent / "data" / "bad_inputs"


def _chain(length: int) -> onnx.ModelProto:
    """x [1, 8] -> Add b -> Relu -> Add b -> ... : ``length`` nodes, one after the other."""
    b = numpy_helper.from_array(np.full((1, 8), 0.001, np.float32), "b")
    nodes, previous = [], "x"
    for i in range(length):
        current = "y" if i == length - 1 else f"t{i}"
        if i % 2:
            nodes.append(helper.make_node("Relu", [previous], [current], name=f"relu{i}"))
        else:
            nodes.append(helper.make_node("Add", [previous, "b"], [current], name=f"add{i}"))
        previous = current
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8])  # noqa: E731
    graph = helper.make_graph(nodes, "chain", [value("x")], [value("y")], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_cycle_check_on_a_20000_node_chain() -> None:
    """Kahn's algorithm: linear in nodes + edges (the quadratic one took minutes at this depth)."""
    model = _chain(20_000)
    assert structural_problem(model) is None
    model.graph.node.reverse()  # the checker's business (not sorted), not a cycle
    assert structural_problem(model) is None


def test_a_cycle_deep_in_a_long_chain_is_found_and_named() -> None:
    model = _chain(20_000)
    model.graph.node[15_000].input[0] = "t15500"  # add15000 reads what relu15501's chain makes from it
    assert structural_problem(model) == "the graph has a cycle through 't15500'"


def test_the_tensor_named_is_on_the_cycle_not_downstream_of_it() -> None:
    nodes = [
        helper.make_node("Identity", ["a"], ["y"]),  # first in graph order: waits on the cycle, is not on it
        helper.make_node("Neg", ["y"], ["z"]),
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
    ]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [4])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("z")]))
    assert structural_problem(model) == "the graph has a cycle through 'a'"


def test_tensor_data_must_be_what_the_dims_say() -> None:
    tensor = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    assert tensor_problem(tensor) is None
    tensor.raw_data += bytes(16)
    assert tensor_problem(tensor) == "has 80 bytes of raw_data, but its dims (4x4) and type say 64"
    tensor.raw_data = bytes(60)
    assert tensor_problem(tensor) == "has 60 bytes of raw_data, but its dims (4x4) and type say 64"
    typed = helper.make_tensor("t", TensorProto.FLOAT, [2, 3], [1.0] * 6)
    assert tensor_problem(typed) is None
    typed.float_data.append(7.0)
    assert tensor_problem(typed) == "has 7 values in float_data, but its dims (2x3) say 6"
    for dtype, values in ((TensorProto.INT4, [1, -2, 3]), (TensorProto.FLOAT16, [0.5, 1.0, 2.0])):
        packed = numpy_helper.from_array(numpy_helper.to_array(helper.make_tensor("q", dtype, [3], values)), "q")
        assert tensor_problem(packed) is None, TensorProto.DataType.Name(dtype)
        assert tensor_problem(helper.make_tensor("q", dtype, [3], values)) is None


def test_a_constant_with_the_wrong_byte_count_is_refused() -> None:
    value = numpy_helper.from_array(np.ones(4, np.float32), "v")
    value.raw_data = bytes(12)
    nodes = [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])]
    info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [4])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [info("x")], [info("y")]))
    assert "attribute 'value' has 12 bytes of raw_data" in (structural_problem(model) or "")


@pytest.mark.parametrize(
    ("name", "error", "says"),
    [
        ("conv_kernel_mismatch.onnx", ModelLoadError, "has kernel_shape 5x5, but its weight 'w' is 2x1x3x3"),
        ("raw_data_too_long.onnx", ModelLoadError, "initializer 'w' has 80 bytes of raw_data"),
        ("typed_data_too_long.onnx", ModelLoadError, "initializer 'w' has 20 values in float_data"),
        ("no_kernel.onnx", UnsupportedModelError, "onnxruntime cannot run the model"),
    ],
)
def test_validate_names_the_file_and_the_problem(name: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error) as raised:
        io.validate(CORPUS / name)
    assert str(raised.value).startswith(f"{CORPUS / name}: ") and says in str(raised.value)
    assert "\n" not in str(raised.value)


def test_validate_hands_back_the_session_it_loaded(tmp_path: Path) -> None:
    path = tmp_path / "chain.onnx"
    onnx.save(_chain(4), path)
    valid = io.validate(path)
    assert valid.file.path == path and [i.name for i in valid.runner.inputs] == ["x"]
    (out,) = valid.runner.run({"x": np.zeros((1, 8), np.float32)})
    np.testing.assert_allclose(out, np.full((1, 8), 0.002, np.float32), rtol=1e-6)


def test_inspect_and_compare_a_10000_node_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chain.onnx"
    onnx.save(_chain(10_000), path)
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["nodes"] == 10_000 and summary["op_histogram"] == {"Add": 5_000, "Relu": 5_000}
    assert main(["compare", str(path), str(path), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)["comparison"]
    assert comparison["samples"] == 8
    [output] = comparison["outputs"]
    assert output["name"] == "y" and output["max_abs"] == 0.0 and output["cosine"] == 1.0
