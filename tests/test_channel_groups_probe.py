"""tools/channel_groups_probe.py: per-channel and two-group activation scales simulated on a small QDQ CNN whose
first convolution writes one channel a hundred times narrower than the others, into a depthwise convolution that
multiplies it back up (the layout detector's pattern)."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from helpers import parse

from onnxopt.api import optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from channel_groups_probe import (
    channel_ranges,
    every_pair,
    pairs_between,
    two_groups,
    with_channel_scales,
    without_rounding,
)

RNG = np.random.default_rng(11)
CNN = """<ir_version: 8, opset_import: ["": 13]>
g (float[1, 3, 16, 16] x) => (float[1, 8, 16, 16] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
    a1 = Clip(c1, lo, hi)
    y = Conv<pads=[1,1,1,1], group=8>(a1, w2, b2)
}"""


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a per-channel pair fails fused
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


def _snr(reference: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2)))


def test_two_scales_give_back_the_narrow_channel_and_keep_the_clips_clamp(tmp_path: Path) -> None:
    w1 = RNG.normal(0, 1.5, (8, 3, 3, 3)).astype(np.float32)
    w1[0] *= 0.01  # channel 0: about a hundredth of the others' range
    w2 = RNG.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32)
    w2[0] *= 100.0  # ... multiplied back up, so it matters as much as the others downstream
    b1 = np.full(8, 0.5, np.float32)
    b1[0] = 0.005
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(8, np.float32),
               "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}  # fmt: skip
    float_model = parse(CNN, **weights)
    onnx.save(float_model, str(tmp_path / "f.onnx"))
    np.savez(tmp_path / "d.npz", x=RNG.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32))
    # 8-bit weights on any CPU: on an AVX2-only one ``auto`` takes 7, whose rounding alone bounds the SNR near 31 dB
    quantize = "quantize:fallback=none;target=vnni"
    optimize(tmp_path / "f.onnx", tmp_path / "q.onnx", passes=quantize, data=str(tmp_path / "d.npz"))
    model = onnx.load(str(tmp_path / "q.onnx"))
    first, second = [n.name for n in model.graph.node if n.op_type == "Conv"]

    pairs = pairs_between(model, first, second)
    assert pairs, "the pair on the first convolution's output (the Clip folded into it) is on the path"
    # --pairs all: the input's pair and the ones between the convolutions, never a weight's; all of rank 4
    everywhere = every_pair(model)
    assert {q.name for q, _ in pairs} < {q.name for q, _ in everywhere}
    assert any(q.input[0] == "x" for q, _ in everywhere)
    assert not {q.input[0] for q, _ in everywhere} & {t.name for t in model.graph.initializer}
    x = np.load(tmp_path / "d.npz")["x"]
    ranges = channel_ranges(model, pairs, {"x": x})
    low, high = ranges[0]
    assert high[0] < high[1:].min() / 20  # the narrow channel, as the probe sees it
    groups = two_groups(low, high)
    assert groups[0] != groups[1:].max() and len(set(groups[1:].tolist())) == 1  # channel 0 alone

    held_out = RNG.uniform(0, 1, (8, 3, 16, 16)).astype(np.float32)
    expected = np.concatenate([_run(float_model, held_out[i : i + 1]) for i in range(8)])
    assert float(np.max(np.clip(np.einsum("oc,nchw->nohw", w1.sum((2, 3)), held_out), 0, None))) > 6  # clamp matters

    def snr(candidate: onnx.ModelProto) -> float:
        return _snr(expected, np.concatenate([_run(candidate, held_out[i : i + 1]) for i in range(8)]))

    one_scale = snr(model)
    grouped = snr(with_channel_scales(model, pairs, ranges, grouped=True))
    per_channel = snr(with_channel_scales(model, pairs, ranges, grouped=False))
    assert grouped > one_scale + 10, (one_scale, grouped)  # the narrow channel rounded away at one scale
    assert per_channel > one_scale + 10, (one_scale, per_channel)
    # unrounded: the bound, with the Clip's clamp kept (dropping it loses the values above 6, far below this)
    unrounded = snr(without_rounding(model, pairs))
    assert unrounded > per_channel, (per_channel, unrounded)
    # the ranges stay within the pair's own: values above the Clip's 6 are still clamped (else the SNR would fall)
    ungrouped = with_channel_scales(model, pairs, ranges, grouped=False)
    q = next(n for n in ungrouped.graph.node if n.name == pairs[0][0].name)
    scales = onnx.numpy_helper.to_array(next(t for t in ungrouped.graph.initializer if t.name == q.input[1]))
    assert scales.shape == (8,) and float(scales.max()) * 255 <= 6.0 * 1.001
