"""PRelu CNNs as tf2onnx writes them (MediaPipe's palm detector): per-channel slopes broadcast as ``[C, 1, 1]``.

Issue 33, item 4: ``--recipe int8`` rolled quantize back on such a model with ``onnxruntime cannot profile the
model: ... running PRelu node`` (and ``--passes ...,quantize:fallback=none`` with ``failed to run the model``).
The written graph was right; the sessions onnxopt opens on it were not. A slope of 1 KB or more (``C >= 256``)
is handed to onnxruntime as a shared weight; in an optimized session onnxruntime's NHWC layout transformation of
the int8 Convs transposes the slope in place to ``[1, 1, 1, C]``, and ``add_initializer`` then handed the PRelu
kernel the old ``[C, 1, 1]`` buffer ("Attempting to broadcast an axis by a dimension other than 1. 16 by 256").
Most tests lower :data:`onnxopt.shared_weights.SHARE_MIN_BYTES` so that small slopes (16, 32 channels) are shared
like the palm detector's 256-channel ones; one runs at the real threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import apply, assert_same_outputs, rng
from onnx import TensorProto, helper, numpy_helper

from onnxopt import shared_weights
from onnxopt.cli import main
from onnxopt.optimizer.node_profile import profile_nodes
from onnxopt.passes.equalize import EqualizeLayersPass
from onnxopt.shared_weights import SharedWeightsModel

INPUT_SHAPE = (1, 3, 32, 32)
#: (slope layout, opset, one slope shared by two PRelus): tf2onnx writes [C, 1, 1]; [1, C, 1, 1] occurs too.
VARIANTS = {
    "c11": ("c11", 13, False),
    "1c11": ("1c11", 13, False),
    "c11-shared-slope": ("c11", 13, True),
    "c11-opset9": ("c11", 9, False),
}


def prelu_cnn(slope: str = "c11", opset: int = 13, shared: bool = False, c1: int = 16, c2: int = 32) -> onnx.ModelProto:
    """A palm-detector-like block stack: Conv -> PRelu -> depthwise Conv -> PRelu -> pointwise Conv -> PRelu ->
    Conv + residual Add -> PRelu -> GlobalAveragePool -> Flatten -> Gemm, with uneven per-channel weight ranges
    (something for equalization to balance) and slopes in ``slope``'s layout; with ``shared`` the last two
    PRelus read one slope."""
    r = rng(7)

    def slope_of(channels: int) -> np.ndarray:
        values = r.uniform(0.05, 0.3, channels).astype(np.float32)
        return values.reshape({"c11": (channels, 1, 1), "1c11": (1, channels, 1, 1)}[slope])

    def spread(*shape: int) -> np.ndarray:  # per-output-channel ranges 30x apart
        return r.uniform(0.1, 3.0, (shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)

    arrays = {
        "w1": r.normal(0, 0.3, (c1, 3, 3, 3)).astype(np.float32),
        "b1": r.normal(0, 0.1, c1).astype(np.float32),
        "s1": slope_of(c1),
        "wd": (r.normal(0, 0.3, (c1, 1, 3, 3)) * spread(c1, 1, 1, 1)).astype(np.float32),
        "bd": r.normal(0, 0.1, c1).astype(np.float32),
        "sd": slope_of(c1),
        "w2": (r.normal(0, 0.2, (c2, c1, 1, 1)) * spread(c2, 1, 1, 1)).astype(np.float32),
        "b2": r.normal(0, 0.1, c2).astype(np.float32),
        "s2": slope_of(c2),
        "w3": r.normal(0, 0.05, (c2, c2, 3, 3)).astype(np.float32),
        "b3": r.normal(0, 0.1, c2).astype(np.float32),
        "wf": r.normal(0, 0.3, (10, c2)).astype(np.float32),
        "bf": r.normal(0, 0.1, 10).astype(np.float32),
    }
    if not shared:
        arrays["s3"] = slope_of(c2)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("PRelu", ["c1", "s1"], ["p1"], name="prelu1"),
        helper.make_node("Conv", ["p1", "wd", "bd"], ["cd"], name="depthwise", pads=[1] * 4, group=c1),
        helper.make_node("PRelu", ["cd", "sd"], ["pd"], name="prelu_dw"),
        helper.make_node("Conv", ["pd", "w2", "b2"], ["c2"], name="pointwise"),
        helper.make_node("PRelu", ["c2", "s2"], ["p2"], name="prelu2"),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="conv3", pads=[1] * 4),
        helper.make_node("Add", ["c3", "p2"], ["a3"], name="residual"),
        helper.make_node("PRelu", ["a3", "s2" if shared else "s3"], ["p3"], name="prelu3"),
        helper.make_node("GlobalAveragePool", ["p3"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "prelu_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def _samples(count: int, seed: int) -> np.ndarray:
    return rng(seed).normal(0, 1, (count, *INPUT_SHAPE[1:])).astype(np.float32)


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """``y`` for every sample, as onnxruntime runs the file by default (every optimization on)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def _optimize(tmp_path: Path, model: onnx.ModelProto, capsys, *how: str) -> tuple[int, dict, Path]:
    """``onnxopt optimize`` on ``model`` with 64 calibration samples: (exit status, JSON report, output path)."""
    source, output, data = tmp_path / "model.onnx", tmp_path / "out.onnx", tmp_path / "data.npz"
    onnx.save(model, source)
    np.savez(data, x=_samples(64, 1))
    capsys.readouterr()
    status = main(["optimize", str(source), "-o", str(output), "--data", str(data), "--json", "-q", *how])
    return status, json.loads(capsys.readouterr().out), output


def _quantize_record(report: dict) -> dict:
    (record,) = [p for p in report["passes"] if p["name"] == "quantize"]
    return record


def _assert_close_to_original(model: onnx.ModelProto, output: Path, tmp_path: Path, min_snr_db: float) -> None:
    """On held-out samples: output SNR against the original of at least ``min_snr_db``, top-1 mostly the same."""
    original = tmp_path / "original.onnx"
    onnx.save(model, original)
    x = _samples(32, 2)
    want, got = _outputs(original, x).astype(np.float64), _outputs(output, x).astype(np.float64)
    snr = 10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-30))
    assert snr >= min_snr_db, f"output SNR {snr:.1f} dB < {min_snr_db} dB"
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.9


@pytest.fixture
def share_small_slopes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Share every tensor of 64 bytes or more, so 16- and 32-channel slopes go the way 256-channel ones do."""
    monkeypatch.setattr(shared_weights, "SHARE_MIN_BYTES", 64)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equalize_is_lossless_on_prelu_models(variant: str) -> None:
    model = prelu_cnn(*VARIANTS[variant])
    result, outcome = apply(model, EqualizeLayersPass())
    assert outcome.counts.get("layer pairs equalized", 0) >= 2
    assert [n for n in result.graph.node if n.op_type == "PRelu"]
    slopes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("s")}
    after = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    for name, slope in slopes.items():  # a slope commutes with positive scales: it is not touched
        np.testing.assert_array_equal(after[name], slope)
    for sample in _samples(4, 3):  # the batch is 1, as in the palm detector
        assert_same_outputs(model, result, {"x": sample[None]}, rtol=1e-5)


@pytest.mark.usefixtures("share_small_slopes")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forced_int8_compute_applies_on_prelu_models(variant: str, tmp_path: Path, capsys) -> None:
    model = prelu_cnn(*VARIANTS[variant])
    status, report, output = _optimize(tmp_path, model, capsys, "--passes", "lossless,equalize,quantize:fallback=none")
    record = _quantize_record(report)
    assert status == 0, record["notes"]
    assert record["status"] == "applied"
    assert record["counts"]["weights quantized"] == 5
    written = onnx.load(str(output))
    # int8 compute: each PRelu written as a*x + (1-a)*Relu(x), the Add keeping its name
    assert not any(n.op_type == "PRelu" for n in written.graph.node)
    assert sum(n.op_type == "Add" and n.name.startswith("prelu") for n in written.graph.node) == 4
    assert any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    _assert_close_to_original(model, output, tmp_path, min_snr_db=20)


@pytest.mark.usefixtures("share_small_slopes")
@pytest.mark.parametrize("variant", ["c11", "c11-shared-slope"])
def test_int8_recipe_applies_quantize_on_prelu_models(variant: str, tmp_path: Path, capsys) -> None:
    model = prelu_cnn(*VARIANTS[variant])
    status, report, output = _optimize(tmp_path, model, capsys, "--recipe", "int8")
    record = _quantize_record(report)
    assert status == 0, record["notes"]
    assert record["status"] == "applied"
    _assert_close_to_original(model, output, tmp_path, min_snr_db=25)


def test_256_channel_slopes_at_the_real_sharing_threshold(tmp_path: Path, capsys) -> None:
    """The palm detector's case as it is, nothing lowered: [256, 1, 1] slopes are 1 KB, so they are shared."""
    model = prelu_cnn("c11", c1=256, c2=256)
    (slope,) = [t for t in model.graph.initializer if t.name == "s1"]
    assert numpy_helper.to_array(slope).nbytes >= shared_weights.SHARE_MIN_BYTES
    status, report, output = _optimize(tmp_path, model, capsys, "--passes", "quantize:fallback=none")
    assert status == 0, _quantize_record(report)["notes"]
    assert _quantize_record(report)["status"] == "applied"
    _assert_close_to_original(model, output, tmp_path, min_snr_db=20)


@pytest.mark.usefixtures("share_small_slopes")
def test_optimized_sessions_over_shared_weights_run_the_int8_graph_as_its_file_does(tmp_path: Path, capsys) -> None:
    """The sessions onnxopt opens on an IR model (quality probe, per-node profile) run the slopes onnxruntime's
    layout transformation rewrote, copy them rather than let onnxruntime write into the model's own arrays, and
    still share the weights zero-copy."""
    # the PRelus kept float between int8 Convs (running int8 they become products and a sum, without slopes)
    _, _, output = _optimize(tmp_path, prelu_cnn(), capsys, "--passes", "quantize:fallback=none;exclude=^prelu")
    model = ir.load(output)
    frozen = SharedWeightsModel(model)
    assert {"s1", "sd", "s2", "s3"} <= frozen.rewritable
    assert not any(name.startswith(("w", "b")) for name in frozen.rewritable)  # weights and biases stay views
    before = {name: array.copy() for name, array in frozen.arrays.items()}
    x = _samples(1, 4)
    want = _outputs(output, x)
    np.testing.assert_allclose(frozen.runner(optimize=True).run({"x": x})[0], want, rtol=1e-5, atol=1e-6)
    assert "prelu1" in profile_nodes(model, {"x": x}, runs=2, seconds=0.0).times
    for name, array in frozen.arrays.items():
        np.testing.assert_array_equal(array, before[name])
