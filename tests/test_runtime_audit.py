"""The runtime audit: which kernels onnxruntime runs for a QDQ model, and why a Q/DQ was left running.

Small QDQ graphs built here, audited on the CPU provider (counts pinned to onnxruntime 1.32's behaviour).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from onnxopt.bench.runtime_audit import audit_runtime
from onnxopt.cli import main

RNG = np.random.default_rng(0)


class _Builder:
    """Nodes and initializers of a small QDQ graph (uint8 activations, per-channel int8 weights)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(self, tensor: str, name: str, scale: float, zero_point: int = 0) -> str:
        """QuantizeLinear -> DequantizeLinear of ``tensor``; returns the dequantized tensor."""
        s, z = self.const(f"{name}_s", np.float32(scale)), self.const(f"{name}_z", np.uint8(zero_point))
        self.nodes.append(oh.make_node("QuantizeLinear", [tensor, s, z], [f"{name}_q"], name=f"{name}_Q"))
        self.nodes.append(oh.make_node("DequantizeLinear", [f"{name}_q", s, z], [f"{name}_dq"], name=f"{name}_DQ"))
        return f"{name}_dq"

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        """An int8 weight and its DequantizeLinear (per output channel)."""
        q = self.const(f"{name}_q", RNG.integers(-100, 100, shape).astype(np.int8))
        s = self.const(f"{name}_s", np.full(shape[0], 0.01, np.float32))
        z = self.const(f"{name}_z", np.zeros(shape[0], np.int8))
        self.nodes.append(oh.make_node("DequantizeLinear", [q, s, z], [f"{name}_dq"], name=f"{name}_DQ", axis=0))
        return f"{name}_dq"

    def conv(self, name: str, x: str, cin: int, cout: int = 8) -> str:
        w = self.weight(f"{name}_w", (cout, cin, 3, 3))
        self.nodes.append(oh.make_node("Conv", [x, w], [name], name=name, pads=[1, 1, 1, 1]))
        return name

    def model(self, output: str, channels: int = 8) -> onnx.ModelProto:
        graph = oh.make_graph(
            self.nodes,
            "g",
            [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
            [oh.make_tensor_value_info(output, TensorProto.FLOAT, [1, channels, 16, 16])],
            self.inits,
        )
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


def conv_relu_conv() -> onnx.ModelProto:
    """x -> Q/DQ -> Conv -> Relu -> Q/DQ (zero point 0: the clamp is the Relu) -> Conv -> Q/DQ -> y."""
    b = _Builder()
    c1 = b.conv("conv1", b.qdq("x", "x", 0.02, 128), 3)
    b.nodes.append(oh.make_node("Relu", [c1], ["relu1"], name="relu1"))
    c2 = b.conv("conv2", b.qdq("relu1", "relu1", 0.05), 8)
    return b.model(b.qdq(c2, "y", 0.05, 128))


def requantized() -> onnx.ModelProto:
    """Two convs with a DequantizeLinear -> QuantizeLinear of another scale between them: the Relu between its
    own Q/DQ pairs is removed by onnxruntime (its quantizer's zero point 0 clamps), the requantization stays.
    (A bare Q -> DQ -> Q -> DQ chain would be merged by onnxruntime's double-QDQ remover.)"""
    b = _Builder()
    c1 = b.conv("conv1", b.qdq("x", "x", 0.02, 128), 3)
    b.nodes.append(oh.make_node("Relu", [b.qdq(c1, "c1", 0.05, 128)], ["relu1"], name="relu1"))
    c2 = b.conv("conv2", b.qdq("relu1", "relu1", 0.1), 8)
    return b.model(b.qdq(c2, "y", 0.05, 128))


def hardswish() -> onnx.ModelProto:
    """Conv -> HardSwish -> Conv, every tensor quantized: HardSwish has no int8 kernel."""
    b = _Builder()
    c1 = b.conv("conv1", b.qdq("x", "x", 0.02, 128), 3)
    b.nodes.append(oh.make_node("HardSwish", [b.qdq(c1, "c1", 0.05, 128)], ["hs"], name="hswish"))
    c2 = b.conv("conv2", b.qdq("hs", "hs", 0.05, 128), 8)
    return b.model(b.qdq(c2, "y", 0.05, 128))


def float_conv_int8_weight() -> onnx.ModelProto:
    """A float Conv whose weight comes from a DequantizeLinear (weights-only int8)."""
    b = _Builder()
    return b.model(b.conv("conv1", "x", 3))


def _left(audit, op_type: str) -> list:
    return [k for k in audit.left if k.op_type == op_type]


def test_conv_relu_conv_fuses_completely() -> None:
    audit = audit_runtime(conv_relu_conv(), threads=1)
    assert audit.count("QLinearConv") == 2
    assert audit.count("Conv") == 0 and audit.count("Relu") == 0
    [q], [dq] = _left(audit, "QuantizeLinear"), _left(audit, "DequantizeLinear")
    assert (q.tensor, q.reason) == ("x", "graph input")
    assert dq.reason == "graph output" and not dq.weight
    # the int8 convs run channels-last: one layout Transpose in, one out, and nothing else
    assert audit.count("Transpose") == 2
    assert all(k.reason.startswith("NHWC layout") for k in _left(audit, "Transpose"))
    assert sum(audit.kernels.values()) == 6
    by_node = {q.node: q for q in audit.quantized}
    assert by_node["conv1"].kernel == by_node["conv2"].kernel == "QLinearConv"
    assert by_node["conv1"].matched_by == "name" and by_node["conv1"].runtime_node.startswith("conv1")
    assert audit.float_nodes == []
    assert audit.summary() == "2 QLinearConv, 1 QuantizeLinear + 1 DequantizeLinear kernels left"


def test_audit_is_deterministic_and_json() -> None:
    first, second = audit_runtime(requantized(), threads=1), audit_runtime(requantized(), threads=1)
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())


def test_requantization_between_convs_is_reported() -> None:
    audit = audit_runtime(requantized(), threads=1)
    assert audit.count("QLinearConv") == 2
    assert audit.count("QuantizeLinear") == 2 and audit.count("DequantizeLinear") == 2
    requant = [k for k in audit.left if k.reason.startswith("requantization")]
    assert sorted(k.op_type for k in requant) == ["DequantizeLinear", "QuantizeLinear"]
    assert {k.reason for k in requant} == {
        "requantization: DequantizeLinear -> QuantizeLinear with different scales between conv1 and conv2"
    }


def test_hardswish_runs_float() -> None:
    audit = audit_runtime(hardswish(), threads=1)
    # onnxruntime 1.32 rewrites the float HardSwish into HardSigmoid and Mul (nameless nodes, new tensors):
    # matched back through the names of the DequantizeLinear before it and the QuantizeLinear after it
    assert audit.count("QLinearConv") == 2 and audit.count("HardSigmoid") == 1 and audit.count("Mul") == 1
    [node] = audit.float_nodes
    assert (node.node, node.matched_by) == ("hswish", "neighbours")
    assert node.kernel == "float: DequantizeLinear -> HardSigmoid, Mul -> QuantizeLinear"
    reason = "HardSwish has no int8 kernel (DequantizeLinear -> HardSwish -> QuantizeLinear)"
    assert node.reason == f"{reason}; onnxruntime runs it as HardSigmoid, Mul"
    inside = [k for k in audit.left if k.op_type in ("QuantizeLinear", "DequantizeLinear") and k.reason == node.reason]
    assert sorted(k.op_type for k in inside) == ["DequantizeLinear", "QuantizeLinear"]
    assert audit.count("QuantizeLinear") == audit.count("DequantizeLinear") == 2  # and the graph's input / output


def test_weight_dequantize_of_a_float_conv_runs_at_run_time() -> None:
    audit = audit_runtime(float_conv_int8_weight(), threads=1)
    [dq] = _left(audit, "DequantizeLinear")
    assert dq.weight and dq.tensor == "conv1_w_q" and dq.reason.startswith("weight of a float op: conv1")
    assert audit.weight_dequantize == 1 and audit.count("QuantizeLinear") == 0
    [conv] = audit.quantized
    assert conv.kernel == "float: DequantizeLinear -> Conv" and not conv.int8
    assert "1 DequantizeLinear kernels left (1 of weights)" in audit.summary()


def test_inspect_runtime_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requant.onnx"
    onnx.save(requantized(), str(path))
    assert main(["inspect", str(path), "--runtime", "--json", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    runtime = printed["runtime"]
    assert runtime["kernels"]["com.microsoft.QLinearConv"] == 2
    assert runtime["quantize_linear"] == 2 and runtime["dequantize_linear"] == 2
    assert printed["op_histogram"]["Conv"] == 2  # the file's own summary is still there
    assert main(["inspect", str(path), "--runtime"]) == 0
    text = capsys.readouterr().out
    assert "kernels onnxruntime runs" in text and "requantization" in text


def test_optimize_report_has_the_runtime_section(tmp_path: Path) -> None:
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    args = ["optimize", str(BUNDLED / "model.onnx"), "-o", str(out), "--passes", "quantize:fallback=none"]
    args += ["--data", str(BUNDLED / "train.npz"), "--report", str(report)]
    assert main(args) == 0
    runtime = json.loads(report.read_text())["runtime"]
    # the two Convs, and the two BatchNormalizations as depthwise Convs (without the lossless recipe neither is
    # folded; BatchNormalization has no int8 kernel)
    assert runtime["kernels"]["com.microsoft.QLinearConv"] == 4
    # left running: the input's QuantizeLinear and a DequantizeLinear before the float Softmax
    assert (runtime["quantize_linear"], runtime["dequantize_linear"]) == (1, 1), runtime["left"]
    reasons = " ".join(k["reason"] for k in runtime["left"])
    assert "graph input" in reasons and "graph output" in reasons
    assert all(k["reason"] for k in runtime["left"])
    assert {q["kernel"] for q in runtime["quantized"] if q["op_type"] == "Conv"} == {"QLinearConv"}
    assert main(["report", str(report), "-o", str(tmp_path / "r.html")]) == 0
    assert "What onnxruntime runs" in (tmp_path / "r.html").read_text()
