"""calibration=auto: each activation's range chosen by its readers' output error (range_choice.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
from helpers import parse, run

from onnxopt.api import optimize
from onnxopt.passes.quantize import range_choice
from onnxopt.passes.quantize.range_search import quantize_roundtrip

RNG = np.random.default_rng(3)
GROUPED = """<ir_version: 8, opset_import: ["": 14]>
g (float[N, 4, 6, 6] x) => (float[N, 6, 3, 3] y) {
    y = Conv<pads=[1,1,1,1], strides=[2,2], group=2>(x, w, b)
}"""


def test_reader_error_is_the_layers_relative_output_error(monkeypatch) -> None:
    """With every output position sampled, the error through a grouped, strided, padded Conv is exactly
    ||conv(q(x)) - conv(x)||^2 / ||conv(x) - b||^2 as onnxruntime computes it."""
    monkeypatch.setattr(range_choice, "POSITIONS", 9)  # all 3 x 3 output positions
    weight = RNG.normal(0, 1, (6, 2, 3, 3)).astype(np.float32)
    bias = RNG.normal(0, 1, 6).astype(np.float32)
    proto = parse(GROUPED, w=weight, b=bias)
    x = RNG.normal(0, 1, (5, 4, 6, 6)).astype(np.float32)
    x[:, 1] *= 8  # one channel with a wide range: clipping it costs its group's outputs
    model = ir.from_proto(proto)
    readers = range_choice.ReaderRows([model.graph.inputs[0]], seed=0)
    readers.add("x", x)
    low, high = -2.5, 3.0
    got = readers.output_error("x", low, high, "uint8")

    (clean,) = run(proto, {"x": x})
    (noisy,) = run(proto, {"x": quantize_roundtrip(x.astype(np.float64), low, high, "uint8").astype(np.float32)})
    signal = clean - bias[None, :, None, None]
    expected = float(np.sum((noisy.astype(np.float64) - clean) ** 2) / np.sum(signal.astype(np.float64) ** 2))
    assert got is not None
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_a_range_only_an_unread_channel_needs_is_clipped() -> None:
    """Channel 0 spans +-50 but the MatMul gives it weight 0: the reader's error prefers the tight range
    that the tensor's own round-trip error refuses."""
    text = """<ir_version: 8, opset_import: ["": 14]>
    g (float[N, 2] x) => (float[N, 1] y) { y = MatMul(x, w) }"""
    proto = parse(text, w=np.array([[0.0], [1.0]], np.float32))
    model = ir.from_proto(proto)
    readers = range_choice.ReaderRows([model.graph.inputs[0]], seed=0)
    x = np.stack([RNG.uniform(-50, 50, 400), RNG.normal(0, 1, 400)], axis=1).astype(np.float32)
    readers.add("x", x)
    wide, tight = (-50.0, 50.0), (-4.0, 4.0)
    candidates = {"minmax": wide, "mse": tight}
    method, chosen, errors = range_choice.choose_range(
        candidates, lambda lo, hi: readers.output_error("x", lo, hi, "int8") or 0.0
    )
    assert (method, chosen) == ("mse", tight) and errors["mse"] < errors["minmax"] / 10
    own, _, _ = range_choice.choose_range(
        candidates, lambda lo, hi: range_choice.roundtrip_error(x.reshape(-1), lo, hi, "int8")
    )
    assert own == "minmax"


def test_ties_go_to_the_earlier_candidate() -> None:
    method, _, _ = range_choice.choose_range({"minmax": (0.0, 1.0), "mse": (0.0, 0.5)}, lambda lo, hi: 1.0)
    assert method == "minmax"


def test_auto_calibration_records_each_tensors_choice_in_the_plan(tmp_path) -> None:
    text = """<ir_version: 8, opset_import: ["": 14]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c = Conv<pads=[1,1,1,1]>(x, w1, b1)
        r = Relu(c)
        y = Conv<pads=[1,1,1,1]>(r, w2, b2)
    }"""
    weights = {
        "w1": RNG.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32),
        "b1": RNG.normal(0, 0.1, 8).astype(np.float32),
        "w2": RNG.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32),
        "b2": RNG.normal(0, 0.1, 4).astype(np.float32),
    }
    path, data, out, plan = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "q.onnx", tmp_path / "plan.json"
    onnx.save(parse(text, **weights), str(path))
    np.savez(data, x=RNG.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    result = optimize(path, out, passes="quantize:calibration=auto", data=str(data), save_plan=str(plan))
    assert result.comparison.outputs[0].snr_db > 20
    (entry,) = json.loads(plan.read_text())["passes"].values()
    chosen = entry["calibration"]["chosen"]
    assert set(chosen) >= {"x"} and set(chosen.values()) <= set(range_choice.CANDIDATES)
