"""A plan's calibration results: GPTQ's levels survive the plan's packing exactly, a damaged or mismatched
entry is refused, and the graph digest sees the changes that would make the stored results wrong."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxopt.passes.quantize.planned_calibration import (
    PlannedCalibration,
    decode_levels,
    encode_levels,
    graph_digest,
)


@pytest.mark.parametrize("size", [1, 3, 4, 5, 1027])
def test_levels_round_trip_exactly_with_differences_beyond_one(size: int) -> None:
    rng = np.random.default_rng(size)
    nearest = rng.integers(-127, 128, size=size).astype(np.int8)
    delta = rng.choice([-9, -2, -1, 0, 1, 2, 5], size=size, p=[0.01, 0.02, 0.1, 0.74, 0.1, 0.02, 0.01])
    levels = np.clip(nearest.astype(int) + delta, -127, 127).astype(np.int8)
    levels[0] = -nearest[0] if nearest[0] != -128 else 0  # a difference of up to 254
    back = decode_levels(encode_levels(levels, nearest), nearest)
    assert back.dtype == np.int8 and np.array_equal(back, levels)


def test_levels_keep_the_weights_shape() -> None:
    nearest = np.arange(2 * 3 * 3 * 3, dtype=np.int8).reshape(2, 3, 3, 3)
    levels = nearest.copy()
    levels[1, 2, 0, 1] += 1
    assert np.array_equal(decode_levels(encode_levels(levels, nearest), nearest), levels)


def test_damaged_or_mismatched_levels_are_refused() -> None:
    nearest = np.zeros(16, np.int8)
    text = encode_levels(nearest + 1, nearest)
    with pytest.raises(ValueError, match="hold 16 weights"):
        decode_levels(text, np.zeros(17, np.int8))
    with pytest.raises(ValueError, match="undecodable"):
        decode_levels(text[:-8] + "AAAAAAAA", nearest)
    with pytest.raises(ValueError, match="unknown"):
        decode_levels("x:" + text[2:], nearest)
    with pytest.raises(ValueError, match="outside int8"):
        decode_levels(text, np.full(16, 127, np.int8))


def _graph(weight: np.ndarray, alpha: float = 0.1) -> ir.Graph:
    x = ir.Value(name="x", shape=ir.Shape([1, 4]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(weight))
    mm = ir.node("MatMul", [x, w], name="mm")
    act = ir.node("LeakyRelu", [mm.outputs[0]], attributes={"alpha": alpha}, name="act")
    graph = ir.Graph([x], [act.outputs[0]], nodes=[mm, act], initializers=[w])
    return graph


def test_graph_digest_sees_weights_attributes_and_structure() -> None:
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    base = graph_digest(_graph(weight))
    assert graph_digest(_graph(weight.copy())) == base
    changed = weight.copy()
    changed[3, 1] += 1e-6
    assert graph_digest(_graph(changed)) != base
    assert graph_digest(_graph(weight, alpha=0.2)) != base


def test_a_plan_without_or_for_another_graph_serves_nothing() -> None:
    stored = PlannedCalibration("d" * 64, {"t": (0.0, 1.5)}, {"t": "mse"}, {"t": np.array([0.5, -1.0])}, {})
    entry = stored.to_dict()
    back, why = PlannedCalibration.of(entry, "d" * 64)
    assert back is not None and why == ""
    assert back.ranges == {"t": (0.0, 1.5)} and np.array_equal(back.means["t"], [0.5, -1.0])
    assert PlannedCalibration.of(entry, "e" * 64)[1].startswith("the plan's calibration was learned on another")
    assert "older onnxopt" in PlannedCalibration.of({"ranges": {}}, "d" * 64)[1]
    broken = {**entry, "means": {"t": {"shape": [2], "float64": "%%%"}}}
    assert "malformed" in PlannedCalibration.of(broken, "d" * 64)[1]
    damaged = {**entry, "learned_rounding": {"mm@127": "p:AAAA"}}
    assert "malformed (ValueError)" in PlannedCalibration.of(damaged, "d" * 64)[1]
