"""equalize (cross-layer equalization) and bias correction: exact where they must be, and what they buy int8."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, apply, assert_same_outputs, parse

from onnxopt.api import compare_files, optimize
from onnxopt.data import RandomDataset
from onnxopt.evaluate.layers import layer_errors
from onnxopt.passes.equalize import EqualizeConfig, EqualizeLayersPass
from onnxopt.runtime import Runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from mobilenet_like import INPUT_SHAPE, mobilenet_like

RNG = np.random.default_rng(0)


def _chain(group: int = 1, between: str = "r = Relu(c1)", **extra: np.ndarray) -> onnx.ModelProto:
    c_mid = 6
    w2_shape = (4, c_mid // group, 3, 3)
    return parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
            c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
            {between}
            y = Conv<pads=[1,1,1,1], group={group}>(r, w2, b2)
        }}""",
        w1=(RNG.normal(0, 1, (c_mid, 3, 3, 3)) * np.logspace(-2, 1, c_mid)[:, None, None, None]).astype(np.float32),
        b1=RNG.normal(0, 0.1, c_mid).astype(np.float32),
        w2=RNG.normal(0, 0.5, w2_shape).astype(np.float32),
        b2=RNG.normal(0, 0.1, 4).astype(np.float32),
        **extra,
    )


@pytest.mark.parametrize(
    ("group", "between"),
    [
        (1, "r = Relu(c1)"),
        (2, "r = Relu(c1)"),
        (1, "m = MaxPool<kernel_shape=[3,3], pads=[1,1,1,1]>(c1)\n r = LeakyRelu<alpha=0.1>(m)"),
        (1, "r = Identity(c1)"),
    ],
)
def test_equalization_is_exact_and_balances_the_ranges(group: int, between: str) -> None:
    model = _chain(group, between)
    result, outcome = apply(model, EqualizeLayersPass())
    assert outcome.counts == {"layer pairs equalized": 1}
    x = RNG.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(model, result, {"x": x}, rtol=1e-4)
    row = outcome.details[0]
    assert row["range_ratio_before"] > 5 and row["range_ratio_after"] < 1.05


@pytest.mark.parametrize("between", ["r = Clip(c1, lo, hi)", "r = Sigmoid(c1)"])
def test_chains_through_ops_that_do_not_commute_with_scales_are_left_alone(between: str) -> None:
    bounds = {"lo": np.float32(0), "hi": np.float32(6)} if "lo" in between else {}
    model = _chain(1, between, **bounds)
    _, outcome = apply(model, EqualizeLayersPass())
    assert not outcome.counts


def test_a_layer_read_twice_is_not_scaled() -> None:
    model = _chain()
    model.graph.output.append(onnx.helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, ["N", 6, 8, 8]))
    _, outcome = apply(model, EqualizeLayersPass())
    assert not outcome.counts


def test_a_chain_through_a_graph_output_is_neither_scaled_nor_renamed() -> None:
    model = _chain()
    model.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", 6, 8, 8]))
    result, outcome = apply(model, EqualizeLayersPass())
    assert not outcome.counts
    assert [o.name for o in result.graph.output] == ["y", "r"]
    assert {o for n in result.graph.node for o in n.output} == {"c1", "r", "y"}


def _chain_with_tail() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Sigmoid: one equalizable pair whose second output is an intermediate tensor."""
    c_mid = 6
    return parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
            c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
            r = Relu(c1)
            c2 = Conv<pads=[1,1,1,1]>(r, w2, b2)
            y = Sigmoid(c2)
        }""",
        w1=(RNG.normal(0, 1, (c_mid, 3, 3, 3)) * np.logspace(-2, 1, c_mid)[:, None, None, None]).astype(np.float32),
        b1=RNG.normal(0, 0.1, c_mid).astype(np.float32),
        w2=RNG.normal(0, 0.5, (4, c_mid, 3, 3)).astype(np.float32),
        b2=RNG.normal(0, 0.1, 4).astype(np.float32),
    )


def test_rescaled_tensors_get_new_names_so_per_layer_comparison_sees_no_broken_layer() -> None:
    model = _chain_with_tail()
    result, outcome = apply(model, EqualizeLayersPass())
    data = RandomDataset(Runner(model.SerializeToString()).inputs, 16, dims={}, seed=0)
    report = layer_errors(model, result, data)
    # before the rename, c1 and r were paired with their unscaled namesakes: far below 0 dB, "broken"
    assert report.first_bad is None
    assert [layer.tensor for layer in report.layers] == ["c2", "y"] and report.unmatched == 2  # y: the graph output
    assert all(layer.snr_db > 80 for layer in report.layers)
    # c1 and r hold the old values divided by a per-channel scale: new names; c2 and y mean what they did
    assert outcome.counts == {"layer pairs equalized": 1} and outcome.details[0]["tensors_renamed"] == 2
    produced = [o for n in result.graph.node for o in n.output]
    assert produced == ["c1_equalized", "r_equalized", "c2", "y"]
    assert [o.name for o in result.graph.output] == ["y"]


def test_per_layer_report_after_equalize_on_the_bundled_model_is_clean(tmp_path) -> None:
    data = str(BUNDLED / "eval.npz")
    out = tmp_path / "equalized.onnx"
    optimize(BUNDLED / "model.onnx", out, passes="lossless,equalize", data=data)
    # before the rename: conv2d_1/BiasAdd:0 matched its unscaled namesake at -5.2 dB ("broken")
    comparison = compare_files(BUNDLED / "model.onnx", out, data=data, per_layer=True)
    report = comparison.layers
    assert report is not None and report.first_bad is None
    assert len(report.layers) >= 10 and all(layer.snr_db > 100 for layer in report.layers)
    candidate = {o for n in onnx.load(str(out)).graph.node for o in n.output}
    assert "sequential_1/conv2d_1/BiasAdd:0_equalized" in candidate
    assert "sequential_1/conv2d_1/BiasAdd:0" not in candidate


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        EqualizeConfig(iterations=0)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mobilenet")
    rng = np.random.default_rng(0)
    model = mobilenet_like(rng.standard_normal((64, *INPUT_SHAPE), dtype=np.float32))
    path = folder / "mobilenet.onnx"
    onnx.save(model, str(path))
    data = folder / "data.npz"
    np.savez(data, input=rng.standard_normal((256, *INPUT_SHAPE), dtype=np.float32))
    return path, data


def test_equalize_then_quantize_beats_quantize_alone_on_depthwise_separable_blocks(mobilenet, tmp_path) -> None:
    path, data = mobilenet
    snr, agree = {}, {}
    for name, spec in (("plain", "lossless,quantize"), ("equalized", "lossless,equalize,quantize")):
        out = tmp_path / f"{name}.onnx"
        result = optimize(path, out, passes=spec, data=str(data))
        comparison = compare_files(path, out, data=str(data))
        snr[name], agree[name] = comparison.outputs[0].snr_db, comparison.outputs[0].top1_agreement
        if name == "equalized":
            equalize = next(r for r in result.pipeline.records if r.name == "equalize")
            assert equalize.counts["layer pairs equalized"] == 6 and equalize.max_drift < 1e-4
    # measured here: 11.0 dB / 0.63 top-1 agreement -> 26.2 dB / 0.99
    assert snr["equalized"] > snr["plain"] + 10
    assert agree["equalized"] > 0.95 > agree["plain"]


def test_bias_correction_is_recorded_and_keeps_accuracy(tmp_path) -> None:
    data = str(BUNDLED / "eval.npz")
    result = optimize(BUNDLED / "model.onnx", tmp_path / "bc.onnx", passes="lossless,bias-correct", data=data)
    record = result.pipeline.records[-1]
    assert record.name == "bias-correct" and record.status == "applied"
    assert record.counts["biases corrected"] == 2 and all(row["max_shift"] > 0 for row in record.details)
    # the float model shifts slightly (the shift pre-compensates int8 weight rounding)
    assert 0 < record.max_drift < 0.05
    quantized = optimize(
        BUNDLED / "model.onnx", tmp_path / "q.onnx", passes="lossless,quantize:bias_correct=true", data=data
    )
    q = quantized.pipeline.records[-1]
    # both Convs, and the depthwise Conv the standing BatchNormalization became for int8 compute
    assert q.counts["biases corrected for weight rounding"] == 3
    assert quantized.comparison.reference_accuracy - quantized.comparison.candidate_accuracy <= 0.002
