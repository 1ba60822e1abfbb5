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


def _factor_inputs() -> tuple[ir.Node, np.ndarray, np.ndarray]:
    """A Gemm layer, correlated calibration rows, and the damped ``H`` the factor must invert."""
    weight = RNG.standard_normal((32, 64)).astype(np.float32)
    model = ir.serde.deserialize_model(parse(MODEL, wc=np.zeros((16, 8, 3, 3), np.float32),
                                             wd=np.zeros((8, 1, 3, 3), np.float32), wg=weight))  # fmt: skip
    node = next(n for n in model.graph if n.op_type == "Gemm")
    rows = _correlated(256, (64,))
    rows[:, 5] = 0.0  # an input never seen: its diagonal is 0
    h = rows.astype(np.float64).T @ rows / len(rows)
    h[5, 5] = 1.0
    h[np.diag_indices(64)] += 0.01 * np.diag(h).mean()
    return node, rows, h


@pytest.mark.parametrize("float32_fails", [False, True])
def test_the_inverse_factor_is_upper_and_inverts_the_damped_hessian_once(monkeypatch, float32_fails) -> None:
    from scipy.linalg import lapack

    from onnxopt.passes.quantize import gptq

    refused = []
    if float32_fails:  # the float64 fallback takes over

        def not_definite(a, lower, clean):
            refused.append(a.dtype)
            return a, 1

        monkeypatch.setattr(
            gptq, "_FACTORIZATIONS", ((not_definite, lapack.strtri, np.float32), gptq._FACTORIZATIONS[1])
        )
    node, rows, h = _factor_inputs()
    collector = HessianCollector([node], seed=0)
    collector.add(node.name, rows)
    upper = collector.inverse_factor(node.name)
    assert upper is not None and upper.shape == (1, 64, 64) and upper.dtype == np.float32
    u = upper[0].astype(np.float64)
    np.testing.assert_array_equal(u, np.triu(u))
    inverse = np.linalg.inv(h)
    error = np.abs(u.T @ u - inverse).max() / np.abs(inverse).max()
    assert error <= 1e-4  # ~1e-5 either way: H's float32 products dominate, not the factorization
    assert refused == ([np.dtype(np.float32)] if float32_fails else [])
    assert collector.inverse_factor(node.name) is upper  # computed once: both roundings of a layer share it
    assert node.name not in collector.sums  # and H's sum is freed
