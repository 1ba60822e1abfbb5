"""quantize's options: calibration methods, A16W8, weights-only, ConvTranspose and activation ops, CPU targets,
channel shuffles; and the numpy pieces behind them (range search, CPU detection)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import fused_ops, parse, run

from onnxopt.api import optimize
from onnxopt.bench import int8_kernels
from onnxopt.passes.quantize import cpu_target
from onnxopt.passes.quantize.range_search import entropy_range, mse_range, quantize_roundtrip

RNG = np.random.default_rng(0)
CONV_NET = """<ir_version: 8, opset_import: ["": 14]>
g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
    r1 = Relu(c1)
    c2 = Conv<pads=[1,1,1,1], group=8>(r1, w2, b2)
    h = HardSwish(c2)
    s = HardSigmoid(h)
    p = GlobalAveragePool(s)
    f = Flatten(p)
    y = Gemm<transB=1>(f, w3, b3)
}"""
WEIGHTS = {
    "w1": RNG.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32),
    "b1": RNG.normal(0, 0.1, 8).astype(np.float32),
    "w2": RNG.normal(0, 0.4, (8, 1, 3, 3)).astype(np.float32),
    "b2": RNG.normal(0, 0.1, 8).astype(np.float32),
    "w3": RNG.normal(0, 0.4, (10, 8)).astype(np.float32),
    "b3": RNG.normal(0, 0.1, 10).astype(np.float32),
}


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qopts")
    path = folder / "net.onnx"
    onnx.save(parse(CONV_NET, **WEIGHTS), str(path))
    data = folder / "data.npz"
    np.savez(data, x=RNG.normal(0, 1, (64, 3, 8, 8)).astype(np.float32))
    return path, data


def _quantize(conv_net, tmp_path, spec: str):
    path, data = conv_net
    out = tmp_path / "q.onnx"
    result = optimize(path, out, passes=spec, data=str(data))
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    return result, model


def _snr(result) -> float:
    return result.comparison.outputs[0].snr_db


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse", "auto"])
def test_every_calibration_method_gives_a_valid_int8_model(conv_net, tmp_path, method) -> None:
    result, model = _quantize(conv_net, tmp_path, f"quantize:calibration={method}")
    assert result.pipeline.records[0].status == "applied"
    assert _snr(result) > 15
    ops = fused_ops(model, tmp_path)
    assert ops["QLinearConv"] == 2  # both convs run as integer kernels


def test_int16_activations_need_opset_21_and_are_more_accurate(conv_net, tmp_path) -> None:
    u8, _ = _quantize(conv_net, tmp_path, "quantize")
    a16, model = _quantize(conv_net, tmp_path, "quantize:activations=int16")
    assert "opset upgraded 14 -> 21" in a16.pipeline.records[0].notes
    zero_points = {
        t.data_type
        for t in model.graph.initializer
        if t.name.endswith("_zero_point") and not t.dims and t.data_type != onnx.TensorProto.INT8
    }
    assert zero_points == {onnx.TensorProto.INT16}
    weights_only, _ = _quantize(conv_net, tmp_path, "quantize:weights_only=true")
    # 16-bit activations add almost no error: A16W8 is as accurate as rounding the weights alone
    assert _snr(a16) > _snr(u8) and abs(_snr(a16) - _snr(weights_only)) < 0.5


def test_weights_only_keeps_activations_float(conv_net, tmp_path) -> None:
    result, model = _quantize(conv_net, tmp_path, "quantize:weights_only=true")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # stored int8, decoded by Cast+Mul that onnxruntime folds at session creation: no DequantizeLinear
    # (onnxruntime would run weight-only DequantizeLinear on every call)
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 0
    assert ops["Cast"] == 3 and result.pipeline.records[0].counts["weights stored int8 for float compute"] == 3
    assert _snr(result) > 30  # weight rounding alone


def test_weights_only_plans_float_compute_on_every_node(conv_net, tmp_path) -> None:
    """The plan says what runs: float compute everywhere (not int8 on nodes nothing was decided for), and a
    replay of it writes the same bytes."""
    import json

    plan = tmp_path / "plan.json"
    model, data = conv_net
    optimize(model, tmp_path / "a.onnx", passes="quantize:weights_only=true", data=data, save_plan=plan)
    entry = next(e for e in json.loads(plan.read_text())["passes"].values() if e["pass"] == "quantize")
    assert entry["compute"] == "float" and entry["nodes"]
    assert set(entry["nodes"].values()) == {"float compute, int8 weights"}
    optimize(model, tmp_path / "b.onnx", passes="quantize:weights_only=true", data=data, plan=plan)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_target_without_vnni_limits_weights_to_7_bits(conv_net, tmp_path) -> None:
    result, model = _quantize(conv_net, tmp_path, "quantize:target=avx2")
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = [w for w in weights if w.ndim >= 2]
    assert weights and max(int(np.abs(w).max()) for w in weights) == 63
    assert any("x86 without VNNI" in note for note in result.pipeline.records[0].notes)
    _, vnni = _quantize(conv_net, tmp_path, "quantize:target=vnni")
    peak = max(int(np.abs(onnx.numpy_helper.to_array(t)).max()) for t in vnni.graph.initializer if t.dims)
    assert peak >= 127


def test_eight_bit_weights_are_scored_as_written_where_this_cpu_would_saturate(conv_net, tmp_path, monkeypatch) -> None:
    """An 8-bit-weight model scored on an x86 CPU without VNNI: its fused u8*s8 kernels can saturate int16 there, so
    the budget's sessions run the QDQ graph as written; a 7-bit model, a VNNI or ARM host, a GPU provider: fused."""
    from onnx_ir import serde

    from onnxopt.optimizer import quality

    _, vnni = _quantize(conv_net, tmp_path, "quantize:target=vnni;fallback=none")
    _, avx2 = _quantize(conv_net, tmp_path, "quantize:target=avx2;fallback=none")
    eight, seven = serde.deserialize_model(vnni), serde.deserialize_model(avx2)
    assert int8_kernels.saturates_here(eight, host="avx2")
    assert not int8_kernels.saturates_here(seven, host="avx2")
    assert not int8_kernels.saturates_here(eight, host="vnni") and not int8_kernels.saturates_here(eight, host="arm")
    assert not int8_kernels.saturates_here(eight, ("CUDAExecutionProvider", "CPUExecutionProvider"), host="avx2")
    # int8 weights of float compute (decoded to float, full 8 bits whatever the target) never reach those kernels
    _, stored = _quantize(conv_net, tmp_path, "quantize:target=avx2;weights_only=true")
    assert not int8_kernels.saturates_here(serde.deserialize_model(stored), host="avx2")

    def level(model) -> object:
        runner = quality._runner(model, ("CPUExecutionProvider",))
        return runner.session.get_session_options().graph_optimization_level

    def warned() -> bool:
        result, _ = _quantize(conv_net, tmp_path, "quantize:target=vnni;fallback=none")
        return any("no VNNI" in note for note in result.pipeline.records[0].notes)

    monkeypatch.setattr(int8_kernels, "this_host", lambda: "avx2")
    assert level(eight) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert level(seven) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert warned()  # the run says so
    monkeypatch.setattr(int8_kernels, "this_host", lambda: "vnni")
    assert level(eight) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert not warned()


def test_cpu_detection_reads_the_flags() -> None:
    assert cpu_target.detect("flags\t: fpu sse avx2 fma\n", "x86_64") == "avx2"
    assert cpu_target.detect("flags\t: fpu avx2 avx512f avx512_vnni\n", "x86_64") == "vnni"
    assert cpu_target.detect("flags\t: fpu avx2 avx_vnni\n", "x86_64") == "vnni"
    assert cpu_target.detect("", "aarch64") == "arm"
    assert cpu_target.resolve("auto", ("CUDAExecutionProvider",)).name == "gpu"
    assert cpu_target.resolve("avx2").weight_bits == 7 and cpu_target.resolve("arm").weight_bits == 8
    with pytest.raises(ValueError):
        cpu_target.resolve("sse2")


def test_conv_transpose_weights_are_per_output_channel_on_axis_1(tmp_path) -> None:
    rng = np.random.default_rng(1)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[N, 4, 5, 5] x) => (float[N, 6, 10, 10] y) {
            t = ConvTranspose<strides=[2,2], pads=[0,0,1,1], kernel_shape=[3,3]>(x, w, b)
            y = Relu(t)
        }""",
        w=rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32),
        b=rng.normal(0, 0.1, 6).astype(np.float32),
    )
    path = tmp_path / "ct.onnx"
    onnx.save(model, str(path))
    result = optimize(path, tmp_path / "q.onnx", passes="quantize", data="random:32")
    out = onnx.load(str(tmp_path / "q.onnx"))
    weight_dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and "w_quantized" in n.input[0]]
    assert len(weight_dq) == 1 and onnx.helper.get_attribute_value(weight_dq[0].attribute[0]) == 1
    assert result.comparison.outputs[0].snr_db > 25


def test_channel_shuffle_becomes_a_gather_with_the_same_values(tmp_path) -> None:
    rng = np.random.default_rng(2)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 6, 4, 4] x) => (float[1, 6, 4, 4] y) {
            c = Conv(x, w)
            r1 = Reshape(c, split)
            t = Transpose<perm=[0,2,1,3,4]>(r1)
            s = Reshape(t, back)
            y = Conv(s, w2)
        }""",
        w=rng.normal(0, 0.5, (6, 6, 1, 1)).astype(np.float32),
        w2=rng.normal(0, 0.5, (6, 6, 1, 1)).astype(np.float32),
        split=np.array([1, 2, 3, 4, 4], np.int64),
        back=np.array([1, 6, 4, 4], np.int64),
    )
    path = tmp_path / "shuffle.onnx"
    onnx.save(model, str(path))
    result = optimize(path, tmp_path / "q.onnx", passes="quantize", data="random:16")
    out = onnx.load(str(tmp_path / "q.onnx"))
    ops = collections.Counter(n.op_type for n in out.graph.node)
    assert ops["Gather"] == 1 and ops["Transpose"] == 0
    assert result.pipeline.records[0].counts["channel shuffles rewritten as Gather"] == 1
    assert result.comparison.outputs[0].snr_db > 25
    order = next(onnx.numpy_helper.to_array(t) for t in out.graph.initializer if "channel_order" in t.name)
    assert order.tolist() == [0, 3, 1, 4, 2, 5]  # 2 groups of 3, interleaved


def test_range_searches_clip_outliers_and_keep_zero() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.laplace(0, 1, 60000), [80.0, -75.0]]).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    for search in (mse_range, entropy_range):
        lo, hi = search(values, low, high, "int8")
        assert low < lo <= 0 <= hi < high  # zero stays inside, and the outliers no longer set the scale
    base = np.mean((quantize_roundtrip(values, low, high, "int8") - values) ** 2)
    lo, hi = mse_range(values, low, high, "int8")
    assert np.mean((quantize_roundtrip(values, lo, hi, "int8") - values) ** 2) < base
    relu = np.abs(values)
    lo, hi = entropy_range(relu, 0.0, float(relu.max()), "uint8")
    assert lo == 0.0 and 0 < hi < float(relu.max())


def test_quantized_outputs_stay_close_with_unknown_batch(conv_net, tmp_path) -> None:
    _, model = _quantize(conv_net, tmp_path, "quantize")
    x = RNG.normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
    (y,) = run(model, {"x": x})
    (ref,) = run(onnx.load(str(conv_net[0])), {"x": x})
    assert y.shape == (3, 10) and np.abs(y - ref).max() < 0.2 * np.abs(ref).max()


def test_a_bias_int32_cannot_hold_stays_float(tmp_path) -> None:
    # the Conv reads a near-constant tensor (scale ~1e-9), so bias / (s_x * s_w) would wrap around int32
    spec = """<ir_version: 8, opset_import: ["": 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        tiny = Mul(x, eps)
        c = Conv<pads=[1,1,1,1]>(tiny, w, b)
        y = Relu(c)
    }"""
    weights = {
        "eps": np.array(1e-9, np.float32),
        "w": RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "b": np.array([1000.0, -5.0, 3.0, 20000.0], np.float32),
    }
    path = tmp_path / "m.onnx"
    onnx.save(parse(spec, **weights), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=RNG.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    result, model = _quantize((path, data), tmp_path, "quantize")
    record = result.pipeline.records[0]
    assert any("overflows int32" in s for s in record.skipped)
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in model.graph.initializer)
    assert result.comparison.outputs[0].snr_db > 40  # the bias is the output here: it must survive exactly


def _conv_chain(tmp_path, body: str, convs: int, seed: int, **constants: np.ndarray):
    """A saved chain of ``convs`` 4-channel 3x3 Convs (weights w1.. drawn from ``seed``, and ``constants``) written
    by ``body``, each node named by its output, and 32 samples of data: (model path, data path)."""
    rng = np.random.default_rng(seed)
    weights = {
        f"w{i}": rng.normal(0, 0.4, (4, 3 if i == 1 else 4, 3, 3)).astype(np.float32) for i in range(1, convs + 1)
    } | constants
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{ {body} }}""",
        **weights,
    )
    for node in model.graph.node:
        node.name = node.output[0]
    path, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, str(path))
    np.savez(data, x=rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    return path, data


_CONV = "Conv<pads=[1, 1, 1, 1]>"


def test_a_tensor_between_two_float_running_nodes_gets_no_qdq_pair(tmp_path) -> None:
    """t1's and t4's Convs kept float: t2's reads t1 and t3's writes t4's input, so both run float, and a Q/DQ
    pair on t2 between them would fuse into no integer kernel -- it would only round. t5 -> y still runs int8."""
    body = "\n".join(
        f"{out} = {_CONV}({src}, w{i})"
        for i, (src, out) in enumerate(
            [("x", "t1"), ("t1", "t2"), ("t2", "t3"), ("t3", "t4"), ("t4", "t5"), ("t5", "y")], start=1
        )
    )
    chain = _conv_chain(tmp_path, body, 6, seed=0)
    result, quantized = _quantize(chain, tmp_path, "quantize:fallback=none;exclude=^t[14]$")
    assert result.pipeline.records[0].counts["tensors left float between float-running nodes"] == 1
    read = {i for n in quantized.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    assert "t2" not in read and "t5" in read  # t5: its Conv runs float, y's int8 -- its pair feeds QLinearConv
    assert fused_ops(tmp_path / "q.onnx", tmp_path)["QLinearConv"] == 1


def test_a_folded_relu_keeps_its_clamping_pair_between_float_running_nodes(tmp_path) -> None:
    """t1's and t4's Convs kept float run t2's and t3's float, but the Relu between them is folded into the
    quantizer of t2: that pair is the activation, so it stays (without it negative values would reach t3's)."""
    body = (f"t1 = {_CONV}(x, w1)\nt2 = {_CONV}(t1, w2)\nr2 = Relu(t2)\nt3 = {_CONV}(r2, w3)\n"
            f"t4 = {_CONV}(t3, w4)\ny = {_CONV}(t4, w5)")  # fmt: skip
    result, quantized = _quantize(
        _conv_chain(tmp_path, body, 5, seed=1), tmp_path, "quantize:fallback=none;exclude=^t[14]$"
    )
    read = {i for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "Relu") for i in n.input}
    assert "r2" in read or "t2" in read, [n.op_type for n in quantized.graph.node]  # clamped by a pair or a Relu
    assert _snr(result) > 20.0, _snr(result)


def test_a_constant_shared_with_a_float_node_spreads_no_float(tmp_path) -> None:
    """k is read by a0 (kept float) and by a1 and a2: a constant is rounded per reader, so a1 and a2 still run
    QLinearAdd and the tensors between them keep their pairs -- only activations make a neighbour run float. t1
    alone, between t1's Conv and a0, both float, is left float."""
    rng = np.random.default_rng(30)
    body = (f"t1 = {_CONV}(x, w1)\na0 = Add(t1, k)\nt2 = {_CONV}(a0, w2)\na1 = Add(t2, k)\na2 = Add(a1, k)\n"
            f"y = {_CONV}(a2, w3)")  # fmt: skip
    chain = _conv_chain(tmp_path, body, 3, seed=3, k=rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32))
    result, quantized = _quantize(chain, tmp_path, "quantize:fallback=none;exclude=^a0$")
    assert result.pipeline.records[0].counts["tensors left float between float-running nodes"] == 1
    read = {i for n in quantized.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    assert {"t2", "a1"} <= read and "t1" not in read, sorted(read)
    assert fused_ops(tmp_path / "q.onnx", tmp_path)["QLinearAdd"] == 2


def test_a_matmul_writing_a_float_output_still_reads_int8(tmp_path) -> None:
    """A MatMul's integer kernel writes float (MatMulIntegerToFloat): an Add kept float after it does not make it
    float, so the pair on its input from the graph input stays."""
    rng = np.random.default_rng(2)
    text = """<ir_version: 8, opset_import: ["": 13]>
    g (float[N, 16] x) => (float[N, 8] y) {
        m = MatMul(x, w)
        y = Add(m, b)
    }"""
    model = parse(text, w=rng.normal(0, 0.3, (16, 8)).astype(np.float32), b=np.zeros(8, np.float32))
    for node in model.graph.node:
        node.name = node.output[0]
    path, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, str(path))
    np.savez(data, x=rng.normal(0, 1, (64, 16)).astype(np.float32))
    _, quantized = _quantize((path, data), tmp_path, "quantize:fallback=none;exclude=^y$")
    read = {i for n in quantized.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    assert "x" in read, [n.op_type for n in quantized.graph.node]
