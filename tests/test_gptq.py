"""GPTQ weight rounding: same int8 format as nearest rounding, less output error on inputs it never saw."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import parse

from onnxopt.passes.quantize.gptq import HessianCollector, gptq_round
from onnxopt.passes.quantize.weight_rounding import quantize_weight

RNG = np.random.default_rng(0)
MODEL = """<ir_version: 8, opset_import: ["": 13]>
g (float[N, 8, 10, 10] x, float[N, 64] v) => (float[N, 16, 10, 10] y, float[N, 32] z, float[N, 8, 10, 10] d) {
    y = Conv<pads=[1,1,1,1]>(x, wc)
    d = Conv<pads=[1,1,1,1], group=8>(x, wd)
    z = Gemm<transB=1>(v, wg)
}"""


def _correlated(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inputs whose channels (and, for images, neighbouring pixels) correlate: what makes error feedback pay."""
    if len(shape) == 3:  # smooth images: 2x2 blocks of one value, shared in part by every channel
        coarse = RNG.standard_normal((n, 1, shape[1] // 2, shape[2] // 2))
        base = coarse.repeat(2, axis=2).repeat(2, axis=3)
    else:
        base = RNG.standard_normal((n, 1))
    return (base + 0.3 * RNG.standard_normal((n, *shape))).astype(np.float32)


@pytest.mark.parametrize("weight_max", [127, 63])
def test_gptq_beats_nearest_rounding_on_held_out_inputs(weight_max) -> None:
    weights = {
        "wc": RNG.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "wd": RNG.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "wg": RNG.standard_normal((32, 64)).astype(np.float32),
    }
    model = ir.serde.deserialize_model(parse(MODEL, **weights))
    nodes = {n.inputs[1].name: n for n in model.graph}
    for n in model.graph:
        n.name = n.inputs[1].name
    collector = HessianCollector(list(model.graph), seed=0)
    calibration_x, calibration_v = _correlated(64, (8, 10, 10)), _correlated(256, (64,))
    for layer in ("wc", "wd"):
        collector.add(layer, calibration_x)
    collector.add("wg", calibration_v)
    held_x, held_v = _correlated(64, (8, 10, 10)), _correlated(256, (64,))

    def output_error(name: str, q: np.ndarray, scale: np.ndarray) -> float:
        w = weights[name]
        shape = [-1] + [1] * (w.ndim - 1)
        error = w - q.astype(np.float32) * scale.reshape(shape)
        if name == "wg":
            return float(np.mean((held_v @ error.T) ** 2))
        groups = 8 if name == "wd" else 1
        padded = np.pad(held_x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), (2, 3))
        patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, groups, 8 // groups * 9)  # [P, G, K]
        per_group = error.reshape(groups, -1, 8 // groups * 9)  # [G, R, K]
        return float(np.mean(np.einsum("pgk,grk->pgr", patches, per_group) ** 2))

    for name, node in nodes.items():
        upper = collector.inverse_factor(name)
        assert upper is not None and upper.dtype == np.float32
        q, scale = gptq_round(node, weights[name], upper, weight_max)
        near_q, near_scale = quantize_weight(weights[name], 0, weight_max)
        assert q.dtype == np.int8 and q.shape == weights[name].shape and int(np.abs(q).max()) <= weight_max
        np.testing.assert_allclose(scale, near_scale)  # the integer format is unchanged: only the levels move
        ratio = output_error(name, q, scale) / output_error(name, near_q, near_scale)
        # dense layers gain a lot; a depthwise kernel (9 inputs per channel) has little error to redistribute
        assert ratio < (1.1 if name == "wd" else 0.5), (name, ratio)
