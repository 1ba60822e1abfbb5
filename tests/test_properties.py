"""Property tests: random CNN graphs with random weights keep their outputs through lossless passes.

Graphs mix Conv (groups, dilation, strides, padding), BatchNormalization with
random statistics (some scales negative), Relu/LeakyRelu/Clip, per-channel
Mul/Add, residual Add around a Conv(+BN), Concat with a 1x1 Conv branch,
Max/Average/GlobalAverage pooling, and a Flatten + Gemm/MatMul head with BN
on the features. Properties: the ``lossless`` recipe and every lossless pass
on its own keep the outputs (within the pass's tolerance), are never rolled
back, and emit a model the checker and onnxruntime accept.
``ONNXOPT_HYPOTHESIS_PROFILE=nightly`` runs many more examples.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io
from onnxopt.optimizer import Context, Pipeline
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, build_passes, load_recipe, parse_spec
from onnxopt.passes import REGISTRY
from onnxopt.runtime import Runner

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
        kind = draw(
            st.sampled_from(["conv", "conv", "bn", "act", "affine", "pool", "residual", "concat", "avgpool", "gap"])
        )
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
        elif kind == "residual":  # x + BN(Conv3x3(x)): the shape is kept
            weight = b.const(r.normal(0, 0.3, (channels, channels, 3, 3)))
            branch = b.emit("Conv", [name, weight], pads=[1, 1, 1, 1])
            if draw(st.booleans()):
                branch = b.bn(branch, channels)
            name = b.emit("Add", [name, branch])
        elif kind == "concat":  # [x, Conv1x1(x)] on the channel axis
            extra = draw(st.sampled_from([1, 2]))
            branch = b.emit("Conv", [name, b.const(r.normal(0, 0.5, (extra, channels, 1, 1)))])
            name = b.emit("Concat", [name, branch], axis=1)
            channels += extra
        elif kind == "gap":
            name = b.emit("GlobalAveragePool", [name])
            size = 1
        elif size >= 2:
            op = "MaxPool" if kind == "pool" else "AveragePool"
            name = b.emit(op, [name], kernel_shape=[2, 2], strides=[2, 2])
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


def _check_pipeline(model: onnx.ModelProto, recipe: list[tuple[str, dict[str, object]]]) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    result = Pipeline(build_passes(recipe)).run(io.from_proto(model), Context(guard_samples=4))
    rolled_back = [(r.name, r.notes) for r in result.records if r.status == "rolled back"]
    assert not rolled_back, rolled_back
    assert result.max_drift <= 1e-4
    out = io.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    Runner(out.SerializeToString())  # onnxruntime accepts it
    return out


@given(cnn_models())
def test_lossless_recipe_preserves_outputs_and_validity(model: onnx.ModelProto) -> None:
    _check_pipeline(model, load_recipe("lossless"))  # as shipped: a BN with no layer to fold into is kept
    every_bn_folded = parse_spec(BUILTIN_RECIPES["lossless"].replace("fold-bn:standalone=keep", "fold-bn"))
    out = _check_pipeline(model, every_bn_folded)
    assert "BatchNormalization" not in {n.op_type for n in out.graph.node}


LOSSLESS_PASSES = sorted(name for name, cls in REGISTRY.items() if cls.lossless)


@pytest.mark.parametrize("pass_name", LOSSLESS_PASSES)
@settings(max_examples=max(10, settings().max_examples // 5))
@given(model=cnn_models())
def test_every_lossless_pass_alone_preserves_outputs(pass_name: str, model: onnx.ModelProto) -> None:
    _check_pipeline(model, [(pass_name, {})])


LOSSY_RECIPES = [
    "clip-weights",
    "clip-weights:mode=percentile;value=99;granularity=layer",
    "prune-magnitude:sparsity=0.7;protect_first=0",
    "prune-magnitude:scope=global;importance=l2;sparsity=0.5",
    "prune-magnitude:pattern=1:2",
    "prune-channels:ratio=0.5",
    "prune-channels:ratio=0.3;importance=bn;multiple=2",
    "quantize",
    "quantize:activations=int8;calibration=percentile",
    "prune-channels:ratio=0.5,reconstruct:layers=all",
]


@pytest.mark.parametrize("spec", LOSSY_RECIPES)
@settings(max_examples=max(10, settings().max_examples // 5))
@given(model=cnn_models())
def test_lossy_passes_keep_the_model_valid(spec: str, model: onnx.ModelProto) -> None:
    """A lossy pass may change outputs, never validity or the outputs' shapes."""
    from onnxopt.optimizer.recipe import parse_spec

    onnx.checker.check_model(model, full_check=True)
    result = Pipeline(build_passes(parse_spec(spec))).run(io.from_proto(model), Context(guard_samples=4))
    assert all(r.status != "rolled back" for r in result.records), [r.notes for r in result.records]
    out = io.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    runner = Runner(out.SerializeToString())
    assert [o.shape for o in runner.outputs] == [o.shape for o in Runner(model.SerializeToString()).outputs]


@settings(max_examples=max(10, settings().max_examples // 5))
@given(model=cnn_models())
def test_prune_channels_at_ratio_zero_is_the_identity(model: onnx.ModelProto) -> None:
    from onnxopt.optimizer.recipe import parse_spec

    result = Pipeline(build_passes(parse_spec("prune-channels:ratio=0"))).run(io.from_proto(model), Context())
    assert [r.status for r in result.records] == ["unchanged"]
    assert result.max_drift == 0
