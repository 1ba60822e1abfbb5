"""The QDQ graph the quantize pass writes is one int8 chain in what onnxruntime runs (issue 35).

Each graph is built here, quantized with int8 compute forced (``fallback=none``), and opened the way the
benchmark opens it (every graph optimization): in the graph onnxruntime then runs, every Conv is a
QLinearConv and the only QuantizeLinear / DequantizeLinear kernels left are the model's input and output --
no requantization inside the chain (a ReLU6 between two convolutions used to leave one per block). Counts of
kernels are deterministic for a given onnxruntime; outputs are compared with the float model too.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import ops as op_types
from helpers import parse
from onnx import TensorProto, helper, numpy_helper

from onnxopt.api import optimize
from onnxopt.cli import main


class _Graph:
    """A small NCHW CNN under construction, with seeded weights."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.inits)}"

    def const(self, array: np.ndarray) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def const_int(self, values: list[int]) -> str:
        name = self._name("i")
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:  # type: ignore[no-untyped-def]
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{out}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1) -> str:
        w = self.rng.normal(0, (2.0 / (cin // group * k * k)) ** 0.5, (cout, cin // group, k, k))
        return self.op(
            "Conv", x, self.const(w), self.const(self.rng.normal(0, 0.1, cout)), pads=[k // 2] * 4, group=group
        )

    def relu6(self, x: str) -> str:
        return self.op("Clip", x, self.const(np.array(0.0)), self.const(np.array(6.0)))

    def save(self, out: str, path: Path, opset: int = 13) -> Path:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", "c", "h", "w"])],
            self.inits,
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
        return path


def _relu6_chain(g: _Graph) -> str:  # MobileNetV2's block: pointwise, ReLU6, depthwise, ReLU6, pointwise
    x = g.relu6(g.conv("x", 3, 16))
    x = g.relu6(g.conv(x, 16, 16, group=16))
    x = g.relu6(g.conv(x, 16, 32, k=1))
    return g.conv(x, 32, 32, k=1)


def _relu_maxpool(g: _Graph) -> str:
    x = g.op("MaxPool", g.op("Relu", g.conv("x", 3, 16)), kernel_shape=[2, 2], strides=[2, 2])
    return g.conv(g.op("Relu", g.conv(x, 16, 32)), 32, 32)


def _silu(g: _Graph) -> str:
    x = g.conv("x", 3, 16)
    return g.conv(g.op("Mul", x, g.op("Sigmoid", x)), 16, 32)


def _residual(g: _Graph) -> str:
    x = g.op("Relu", g.conv("x", 3, 16))
    y = g.conv(g.op("Relu", g.conv(x, 16, 16)), 16, 16)
    return g.conv(g.op("Relu", g.op("Add", x, y)), 16, 16)


def _concat(g: _Graph) -> str:
    x = g.op("Relu", g.conv("x", 3, 16))
    a, b = g.op("Relu", g.conv(x, 16, 16)), g.op("Relu", g.conv(x, 16, 16, k=1))
    return g.conv(g.op("Concat", a, b, axis=1), 32, 32)


def _resize(g: _Graph) -> str:
    x = g.op("Relu", g.conv("x", 3, 16))
    x = g.op("Resize", x, g.const(np.array([])), g.const(np.array([1, 1, 2, 2])), mode="nearest")
    return g.conv(x, 16, 16)


def _se_block(g: _Graph) -> str:
    x = g.relu6(g.conv("x", 3, 32))
    s = g.conv(g.op("Relu", g.conv(g.op("GlobalAveragePool", x), 32, 8, k=1)), 8, 32, k=1)
    return g.conv(g.op("Mul", x, g.op("Sigmoid", s)), 32, 32, k=1)


def _paddle_hardswish(g: _Graph) -> str:  # x * Clip(x + 3, 0, 6) / 6, as paddle2onnx writes HardSwish; a Sub too
    x = g.op("Sub", g.conv("x", 3, 16), g.const(np.array(0.5)))
    gate = g.relu6(g.op("Add", x, g.const(np.array(3.0))))
    return g.conv(g.op("Div", g.op("Mul", x, gate), g.const(np.array(6.0))), 16, 16)


def _focus_spp(g: _Graph) -> str:  # YOLOX's stem (space-to-depth by four Slices) and SPP (three MaxPools of SiLU)
    parts = []
    for h, w in ((0, 0), (1, 0), (0, 1), (1, 1)):
        if h:  # as torch exports x[..., h::2, w::2]: two Slices, one axis each
            rows = g.op("Slice", "x", *(g.const_int(v) for v in ([h], [2**62], [2], [2])))
            parts.append(g.op("Slice", rows, *(g.const_int(v) for v in ([w], [2**62], [3], [2]))))
        else:
            starts, ends, axes, steps = (g.const_int(v) for v in ([h, w], [99, 99], [2, 3], [2, 2]))
            parts.append(g.op("Slice", "x", starts, ends, axes, steps))
    x = g.conv(g.op("Concat", *parts, axis=1), 12, 16)
    x = g.op("Mul", x, g.op("Sigmoid", x))  # SiLU: a negative minimum the MaxPools raise
    pools = [g.op("MaxPool", x, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1]) for k in (3, 5, 7)]
    return g.conv(g.op("Concat", x, *pools, axis=1), 64, 16, k=1)


def _split(g: _Graph) -> str:  # CSP-style: one Conv's output split in two branches
    x = g.op("Relu", g.conv("x", 3, 16))
    a, b = (f"split_{i}" for i in range(2))
    g.nodes.append(helper.make_node("Split", [x, g.const_int([8, 8])], [a, b], name="Split_csp", axis=1))
    return g.conv(g.op("Add", g.conv(a, 8, 8), g.conv(b, 8, 8)), 8, 8)


def _mobilenet_v3_block(g: _Graph) -> str:  # HardSwish, depthwise, SE gated by HardSigmoid (onnx ops, opset 14)
    x = g.op("HardSwish", g.conv("x", 3, 16))
    x = g.op("HardSwish", g.conv(x, 16, 16, group=16))
    s = g.conv(g.op("Relu", g.conv(g.op("GlobalAveragePool", x), 16, 8, k=1)), 8, 16, k=1)
    x = g.op("Mul", x, g.op("HardSigmoid", s, alpha=1 / 6, beta=0.5))
    return g.conv(x, 16, 16, k=1)


def _batchnorm_after_relu(g: _Graph) -> str:  # Keras: Conv, Relu, BatchNormalization, MaxPool (fold-bn cannot)
    x = g.op("Relu", g.conv("x", 3, 16))
    stats = [g.rng.uniform(0.5, 2, 16), g.rng.normal(0, 0.3, 16), g.rng.normal(0.5, 0.2, 16), g.rng.uniform(0.5, 2, 16)]
    x = g.op("BatchNormalization", x, *(g.const(a) for a in stats), epsilon=1e-3)
    return g.conv(g.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2]), 16, 16)


def _max_min_relu6(g: _Graph) -> str:  # TF converters' ReLU6: Min(Max(x, 0), 6), constants either side
    x = g.op("Min", g.op("Max", g.conv("x", 3, 16), g.const(np.array(0.0))), g.const(np.array(6.0)))
    x = g.op("Max", g.const(np.array(0.0)), g.conv(x, 16, 16, group=16))
    return g.conv(x, 16, 16, k=1)


GRAPHS = {
    "relu6_chain": (_relu6_chain, {"QLinearConv": 4}),
    "relu_maxpool": (_relu_maxpool, {"QLinearConv": 3}),
    "silu": (_silu, {"QLinearConv": 2, "QLinearSigmoid": 1, "QLinearMul": 1}),
    "residual": (_residual, {"QLinearConv": 4, "QLinearAdd": 1}),
    "concat": (_concat, {"QLinearConv": 4, "QLinearConcat": 1}),
    "resize": (_resize, {"QLinearConv": 2}),
    # the Sub after the first Conv is folded into its bias by fold-affine before quantize sees it
    "paddle_hardswish": (_paddle_hardswish, {"QLinearConv": 2, "QLinearAdd": 1, "QLinearMul": 1}),
    # the stem as SpaceToDepth + Gather, one QuantizeLinear; the MaxPools run on int8 (same scale in and out)
    "focus_spp": (
        _focus_spp,
        {
            "QLinearConv": 2,
            "QLinearSigmoid": 1,
            "QLinearMul": 1,
            "QLinearConcat": 1,
            "NhwcMaxPool": 3,
            "Slice": 0,
            "SpaceToDepth": 1,
            "Gather": 1,
        },
    ),
    "split": (_split, {"QLinearConv": 4, "QLinearAdd": 1, "Split": 1}),
    # HardSwish -> QLinearAdd (clamped to [0, 6]) + QLinearMul; HardSigmoid -> QLinearAdd (clamped to [0, 1])
    "mobilenet_v3_block": (
        _mobilenet_v3_block,
        {"QLinearConv": 5, "QLinearAdd": 3, "QLinearMul": 3, "QLinearGlobalAveragePool": 1},
    ),
    "batchnorm_after_relu": (_batchnorm_after_relu, {"QLinearConv": 3, "NhwcMaxPool": 1}),  # BN: a depthwise Conv
    "max_min_relu6": (_max_min_relu6, {"QLinearConv": 3}),  # Max/Min with constants as Relu/Clip, absorbed
    "se_block": (_se_block, {"QLinearConv": 4, "QLinearGlobalAveragePool": 1, "QLinearSigmoid": 1, "QLinearMul": 1}),
}


def _runtime_kernels(path: Path) -> collections.Counter[str]:
    """The kernels onnxruntime runs for ``path`` with every graph optimization (as the benchmark opens it)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".runtime.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_int8_chains_run_without_requantization(name: str, tmp_path: Path) -> None:
    build, fused = GRAPHS[name]
    g = _Graph()
    model = g.save(build(g), tmp_path / "float.onnx", opset=14)
    x = np.random.default_rng(1).uniform(0, 1, (48, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "fit.npz", x=x[:32])
    np.savez(tmp_path / "held.npz", x=x[32:])
    out = tmp_path / "int8.onnx"
    passes = "lossless,quantize:fallback=none"
    args = ["optimize", str(model), str(out), "--passes", passes, "--data", str(tmp_path / "fit.npz"), "-q"]
    assert main([*args, "--eval-data", str(tmp_path / "held.npz")]) == 0
    kernels = _runtime_kernels(out)
    assert kernels["QuantizeLinear"] == 1, kernels  # the model's input, once
    assert kernels["DequantizeLinear"] == 1, kernels  # the model's output, once
    for op, count in fused.items():
        assert kernels[op] == count, kernels
    floats = {"Conv", "FusedConv", "Clip", "Relu", "Sigmoid", "Add", "Mul", "Sub", "Div", "HardSigmoid", "HardSwish"}
    floats |= {"Max", "Min"}
    assert not floats & set(kernels), kernels
    reference = ort.InferenceSession(str(model)).run(None, {"x": x[32:33]})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x[32:33]})[0]
    snr = 10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2))
    assert snr > 20, snr  # one int8 chain, still the same function


@pytest.mark.parametrize("reshape", [False, True])
def test_a_gemm_head_keeps_a_float_output(tmp_path: Path, reshape: bool) -> None:
    """QGemm writes float: a Gemm read only by float consumers gets no QuantizeLinear, so its output is not rounded
    to 8 bits. The consumer is the model's output, or (as the OCR recognizer ends) a Reshape writing it: that
    output stays float (no fused kernel writes it), so a pair before the Reshape would only round the logits and
    run one more DequantizeLinear."""
    g = _Graph()
    x = g.op("Flatten", g.op("GlobalAveragePool", g.op("Relu", g.conv("x", 3, 16))))
    y = g.op("Gemm", x, g.const(g.rng.normal(0, 0.3, (10, 16))), g.const(np.zeros(10)), transB=1)
    if reshape:
        y = g.op("Reshape", y, g.const_int([1, 2, 5]))
    graph = helper.make_graph(
        g.nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 2, 5] if reshape else [1, 10])],
        g.inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "f.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "q.onnx"
    args = ["optimize", str(tmp_path / "f.onnx"), str(out), "--passes", "quantize:fallback=none"]
    assert main([*args, "--data", str(tmp_path / "d.npz"), "-q"]) == 0
    written = onnx.load(out)
    gemm = next(n for n in written.graph.node if n.op_type == "Gemm")
    readers = [n.op_type for n in written.graph.node if gemm.output[0] in n.input]
    assert readers == (["Reshape"] if reshape else [])  # the Gemm's own output, not a DequantizeLinear's
    kernels = _runtime_kernels(out)
    assert kernels["QGemm"] == 1 and kernels["QLinearConv"] == 1, kernels
    assert kernels["DequantizeLinear"] == 0, kernels


def test_sub_and_div_by_constants_become_add_and_mul() -> None:
    """Sub(x, c) -> Add(x, -c) (exact); Div(x, c) -> Mul(x, 1/c), asked for when activations are quantized, and
    always when 1/c is exact (a power of two); a Div of a constant by x is left alone."""
    from onnxopt import io
    from onnxopt.passes.base import PassLog
    from onnxopt.passes.canonicalize import canonicalize

    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4] x) => (float[1, 4] a, float[1, 4] b, float[1, 4] c, float[1, 4] d)
        <float three = {3.0}, float six = {6.0}, float[4] quarter = {4.0, 0.5, 2.0, 0.25}> {
            a = Sub(x, three)
            b = Div(x, six)
            c = Div(x, quarter)
            d = Div(six, x)
        }"""
    )
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    for activations, ops in ((True, ["Add", "Mul", "Mul", "Div"]), (False, ["Add", "Div", "Mul", "Div"])):
        model = io.from_proto(proto)
        canonicalize(PassLog(), model, activations=activations)
        assert [n.op_type for n in model.graph] == ops
        got = ort.InferenceSession(io.to_proto(model).SerializeToString()).run(None, {"x": x})
        np.testing.assert_array_equal(got[0], expected[0])  # Sub -> Add: bit for bit
        np.testing.assert_allclose(got[1], expected[1], rtol=2e-7)  # x * (1/6): within one ulp
        np.testing.assert_array_equal(got[2], expected[2])  # powers of two: exact
        np.testing.assert_array_equal(got[3], expected[3])


def test_a_conv_whose_output_stays_float_keeps_no_weight_dequantize(tmp_path: Path) -> None:
    """A chosen Conv read only by a node kept float gets no QuantizeLinear on its output, so onnxruntime runs it in
    float: its weight is then stored the float-compute way (folded at session creation), never a
    DequantizeLinear running at every inference (the runtime audit's "weight of a float op")."""
    from onnxopt.bench.runtime_audit import audit_runtime

    g = _Graph()
    first = g.conv("x", 3, 16)
    g.nodes[-1].name = "first"
    kept = g.conv(first, 16, 16)
    g.nodes[-1].name = "kept_float"
    model = g.save(g.conv(g.op("Relu", kept), 16, 16), tmp_path / "float.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).uniform(0, 1, (16, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "q.onnx"
    passes = "quantize:fallback=none;exclude=^kept_float$"
    assert main(["optimize", str(model), str(out), "--passes", passes, "--data", str(tmp_path / "d.npz"), "-q"]) == 0
    audit = audit_runtime(out)
    assert audit.weight_dequantize == 0, audit.summary()
    assert audit.count("QLinearConv") == 1, audit.kernels  # the last Conv, after the float island


def test_spatial_means_and_pads_become_integer_friendly_ops(tmp_path: Path) -> None:
    """ReduceMean over H, W -> GlobalAveragePool (+ Squeeze for keepdims=0); a zero Pad before a Conv -> the Conv's
    pads: the same function, and with int8 compute forced no float ReduceMean or Pad runs and every Conv is a
    QLinearConv."""
    from onnxopt import io
    from onnxopt.passes.base import PassLog
    from onnxopt.passes.canonicalize import canonicalize

    g = _Graph()
    x = g.op("Relu", g.conv("x", 3, 16))
    pads = g.const_int([0, 0, 1, 2, 0, 0, 2, 1])
    padded = g.op("Pad", x, pads, g.const(np.array(0.0)), mode="constant")
    w = g.rng.normal(0, 0.2, (16, 16, 3, 3))
    x = g.op("Relu", g.op("Conv", padded, g.const(w), g.const(np.zeros(16)), pads=[1, 0, 0, 1]))
    kept = g.op("ReduceMean", x, axes=[2, 3], keepdims=1)
    flat = g.op("ReduceMean", x, axes=[-1, -2], keepdims=0)
    out = g.op("Add", g.op("Mul", x, g.op("Sigmoid", kept)), g.op("Unsqueeze", flat, g.const_int([2, 3])))
    path = g.save(g.conv(out, 16, 8, k=1), tmp_path / "float.onnx")
    proto = onnx.shape_inference.infer_shapes(onnx.load(path))  # as the pipeline reads a model: with shapes
    inputs = {"x": np.random.default_rng(2).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)}
    expected = ort.InferenceSession(str(path)).run(None, inputs)[0]
    model = io.from_proto(proto)
    canonicalize(PassLog(), model)
    ops = [n.op_type for n in model.graph]
    assert "ReduceMean" not in ops and "Pad" not in ops and ops.count("GlobalAveragePool") == 2, ops
    got = ort.InferenceSession(io.to_proto(model).SerializeToString()).run(None, inputs)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    np.savez(tmp_path / "fit.npz", x=np.random.default_rng(1).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32))
    out_path = tmp_path / "int8.onnx"
    args = ["optimize", str(path), str(out_path), "--passes", "quantize:fallback=none", "-q"]
    assert main([*args, "--data", str(tmp_path / "fit.npz")]) == 0
    kernels = _runtime_kernels(out_path)
    assert kernels["QLinearConv"] == 3 and kernels["QLinearGlobalAveragePool"] == 2, kernels
    assert not {"Conv", "ReduceMean", "Pad", "GlobalAveragePool"} & set(kernels), kernels


def test_output_scores_are_not_clamped_at_what_calibration_saw(tmp_path: Path) -> None:
    """A Sigmoid the model outputs (a detector's score) is quantized over [0, 1], its logit to where it saturates:
    calibrated where scores stayed below 0.03, a confident score later still reads as itself, not as the
    calibrated maximum."""
    g = _Graph()
    weight = g.const(np.array([10.0, -10.0, 0.0]).reshape(1, 3, 1, 1))  # logit = 10 (x0 - x1) - 4
    score = g.op("Sigmoid", g.op("Conv", "x", weight, g.const(np.array([-4.0]))))
    path = g.save(g.op("Transpose", score, perm=[0, 2, 3, 1]), tmp_path / "float.onnx")  # moved to the output
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (16, 1, 16, 16))
    near = np.clip(base + rng.uniform(-0.05, 0.05, base.shape), 0, 1)  # x0 ~ x1: scores below 0.03
    np.savez(tmp_path / "fit.npz", x=np.concatenate([base, near, rng.uniform(0, 1, base.shape)], 1).astype(np.float32))
    out = tmp_path / "int8.onnx"
    args = ["optimize", str(path), str(out), "--passes", "quantize:fallback=none", "-q"]
    assert main([*args, "--data", str(tmp_path / "fit.npz")]) == 0
    confident = np.zeros((1, 3, 16, 16), np.float32)
    confident[:, 0] = 1.0  # x0 = 1, x1 = 0: logit 6, within the inputs calibration saw
    expected = ort.InferenceSession(str(path)).run(None, {"x": confident})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": confident})[0]
    assert float(expected.min()) > 0.99
    assert float(got.min()) > 0.98, got.min()  # the logit's range reaches 4.6 (0.99): was clamped to 0.03
    assert _runtime_kernels(out)["QLinearSigmoid"] == 1  # still one int8 chain


def test_prelu_runs_int8_as_products_and_a_sum(tmp_path: Path) -> None:
    """onnxruntime has no int8 PRelu: written as a*x + (1-a)*Relu(x) it runs QLinearMul, QLinearAdd and one
    requantization (the Relu's DequantizeLinear -> QuantizeLinear) instead of a float island."""
    g = _Graph()
    x = "x"
    for cin, slopes in ((3, (16, 1, 1)), (16, (1, 16, 1, 1))):  # tf2onnx's [C, 1, 1] and a 4-D slope
        x = g.op("PRelu", g.conv(x, cin, 16), g.const(g.rng.uniform(0.05, 0.3, slopes)))
    path = g.save(g.conv(x, 16, 16), tmp_path / "float.onnx")
    data = np.random.default_rng(1).normal(0, 1, (24, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "fit.npz", x=data[:16])
    out = tmp_path / "int8.onnx"
    args = ["optimize", str(path), str(out), "--passes", "quantize:fallback=none", "-q"]
    assert main([*args, "--data", str(tmp_path / "fit.npz")]) == 0
    kernels = _runtime_kernels(out)
    assert "PRelu" not in kernels and kernels["QLinearConv"] == 3, kernels
    assert kernels["QLinearMul"] == 4 and kernels["QLinearAdd"] == 2, kernels
    assert (kernels["QuantizeLinear"], kernels["DequantizeLinear"]) == (1 + 2, 1 + 2), kernels
    reference = ort.InferenceSession(str(path)).run(None, {"x": data[16:17]})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": data[16:17]})[0]
    assert 10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2)) > 20


def test_float_compute_everywhere_keeps_the_models_own_ops() -> None:
    """The rewrites only integer kernels need (a standing BatchNormalization as a depthwise Conv, a Pad into the
    Conv after it, ReduceMean as GlobalAveragePool) are undone when the pass ends in float compute on every node:
    only the weights' int8 storage is written."""
    g = np.random.default_rng(0)
    body = """c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
     r1 = Relu(c1)
     bn = BatchNormalization(r1, s, bb, m, v)
     pd = Pad(bn, pads)
     c2 = Conv(pd, w2, b2)
     y = ReduceMean<axes=[2,3], keepdims=0>(c2)"""
    weights = {
        "w1": g.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "b1": g.normal(0, 0.1, 8).astype(np.float32),
        "s": g.uniform(0.5, 1.5, 8).astype(np.float32), "bb": g.normal(0, 0.1, 8).astype(np.float32),
        "m": g.normal(0, 0.1, 8).astype(np.float32), "v": g.uniform(0.5, 1.5, 8).astype(np.float32),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w2": g.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32),
        "b2": g.normal(0, 0.1, 4).astype(np.float32),
    }  # fmt: skip
    proto = parse('<ir_version: 8, opset_import: ["": 17]>\ng (float[N,3,8,8] x) => (float[N,4] y) {\n' + body + "\n}",
                  **weights)  # fmt: skip
    data = {"x": g.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)}
    quantized = optimize(proto, passes="quantize:fallback=none", data=data)  # int8: the rewrites stay
    assert "BatchNormalization" not in op_types(quantized.model) and "Pad" not in op_types(quantized.model)
    result = optimize(proto, passes="quantize:fallback=none;max_db_loss=0", data=data)  # no fallback fits: float
    record = result.pipeline.records[-1]
    assert any("compute kept float on every node" in n for n in record.notes), record.notes
    own = [op for op in op_types(result.model) if op not in ("Cast", "Mul")]  # the weights' int8 decoding aside
    assert own == ["Conv", "Relu", "BatchNormalization", "Pad", "Conv", "ReduceMean"]
    assert set(record.counts) == {"weights stored int8 for float compute"}
    assert any("rewrites for integer kernels are undone" in n for n in record.notes)
