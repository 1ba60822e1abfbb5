"""Property tests: random CNN graphs with random weights keep their outputs through lossless passes.

Graphs mix Conv (groups, dilation, strides, padding), BatchNormalization with
random statistics (some scales negative), Relu/LeakyRelu/Clip, per-channel
Mul/Add, MaxPool, and a Flatten + Gemm/MatMul head with BN on the features.
``ONNXOPT_HYPOTHESIS_PROFILE=nightly`` runs many more examples.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io
from onnxopt.pipeline import Context, Pipeline
from onnxopt.recipe import build_passes, load_recipe

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("ONNXOPT_HYPOTHESIS_PROFILE", "ci"))


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, array: np.ndarray) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def emit(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def bn(self, value: str, c: int) -> str:
        r = self.rng
        gamma = r.uniform(0.5, 1.5, c) * np.where(r.random(c) < 0.2, -1, 1)
        params = [gamma, r.normal(0, 0.5, c), r.normal(0, 0.5, c), r.uniform(0.3, 2.0, c)]
        return self.emit("BatchNormalization", [value, *(self.const(p) for p in params)], epsilon=1e-3)


@st.composite
def cnn_models(draw: st.DrawFn) -> onnx.ModelProto:
    b = _Builder(draw(st.integers(0, 2**31 - 1)))
    r = b.rng
    opset = draw(st.sampled_from([9, 13, 15]))
    in_channels = channels = draw(st.sampled_from([2, 4]))
    size, name = 10, "x"
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "act", "affine", "pool"]))
        if kind == "conv":
            group = draw(st.sampled_from([1, channels]))
            out_c = channels * draw(st.sampled_from([1, 2]))
            k, pad = draw(st.sampled_from([1, 3])), draw(st.sampled_from([0, 1]))
            dil, stride = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
            span = dil * (k - 1) + 1
            if size + 2 * pad < span:
                continue
            weight = b.const(r.normal(0, 0.5, (out_c, channels // group, k, k)))
            bias = b.const(r.normal(0, 0.1, out_c))
            name = b.emit(
                "Conv",
                [name, weight, bias],
                group=group,
                pads=[pad] * 4,
                dilations=[dil, dil],
                strides=[stride, stride],
            )
            size, channels = (size + 2 * pad - span) // stride + 1, out_c
        elif kind == "bn":
            name = b.bn(name, channels)
        elif kind == "act":
            op = draw(st.sampled_from(["Relu", "LeakyRelu", "Clip"]))
            if op == "Clip" and opset < 11:  # bounds were attributes before opset 11
                name = b.emit(op, [name], min=-1.0, max=2.0)
            else:
                bounds = [b.const(np.array(-1.0)), b.const(np.array(2.0))] if op == "Clip" else []
                name = b.emit(op, [name, *bounds])
        elif kind == "affine":
            shape = draw(st.sampled_from([(channels, 1, 1), (1, channels, 1, 1), ()]))
            name = b.emit(draw(st.sampled_from(["Mul", "Add"])), [name, b.const(r.uniform(0.5, 1.5, shape))])
        elif size >= 2:
            name = b.emit("MaxPool", [name], kernel_shape=[2, 2], strides=[2, 2])
            size //= 2
    out_shape: list[object] = ["N", channels, size, size]
    if draw(st.booleans()):
        out_shape = ["N", 5]
        flat, features = b.emit("Flatten", [name]), channels * size * size
        if draw(st.booleans()):
            name = b.emit(
                "Gemm", [flat, b.const(r.normal(0, 0.3, (5, features))), b.const(r.normal(0, 0.1, 5))], transB=1
            )
        else:
            name = b.emit("MatMul", [flat, b.const(r.normal(0, 0.3, (features, 5)))])
        name = b.bn(name, 5)
    b.nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(
        b.nodes,
        "random_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_channels, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@given(cnn_models())
def test_lossless_recipe_preserves_outputs_and_validity(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    ir_model = io.from_proto(model)
    result = Pipeline(build_passes(load_recipe("lossless"))).run(ir_model, Context(guard_samples=4))
    rolled_back = [(r.name, r.notes) for r in result.records if r.status == "rolled back"]
    assert not rolled_back, rolled_back
    assert result.max_drift <= 1e-4
    out = io.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert "BatchNormalization" not in {n.op_type for n in out.graph.node}
