"""What int8 rounding does to a layer's weights: the quantizer's weight rounding and the mean output shift it causes.

Shared by ``quantize`` (which rounds, and corrects biases with
``bias_correct=true``) and the standalone ``bias-correct`` pass, so both round
exactly the same way.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, attribute, constant_array, set_constant_input
from onnxopt.passes._weights import weight_axes


def quantize_weight(weight: np.ndarray, axis: int, weight_max: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 along ``axis``: (int8 weights, float32 scales); ``weight_max`` 127 or 63
    (7 bits, for CPUs without VNNI). Bias correction simulates exactly this."""
    peak = np.moveaxis(np.abs(weight.astype(np.float64)), axis, 0).reshape(weight.shape[axis], -1).max(axis=1)
    scale = np.where(peak > 0, peak / weight_max, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -weight_max, weight_max).astype(np.int8)
    return q, scale


def quantize_weight_per_tensor(weight: np.ndarray, weight_max: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale for the whole tensor: (int8 weights, a float32 scalar scale) -- what
    accelerators without per-channel weight scales take; a channel of small weights then gets few levels."""
    peak = float(np.abs(weight.astype(np.float64)).max(initial=0.0))
    scale = np.float32(peak / weight_max if peak > 0 else 1.0)
    q = np.clip(np.round(weight / scale), -weight_max, weight_max).astype(np.int8)
    return q, np.asarray(scale, np.float32)


def rounding_shift(
    node: ir.Node, mean_x: np.ndarray, weight_max: int, rounded: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray | None:
    """The mean output error per output channel that rounding ``node``'s weight (as ``quantize`` does, or as
    ``rounded`` = (int8, scales) says) causes for inputs whose per-channel mean is ``mean_x``; None when the
    shapes do not line up."""
    weight = constant_array(node.inputs[1])
    if weight is None:
        return None
    out_axis, _ = weight_axes(node, weight.ndim)
    q, scale = rounded if rounded is not None else quantize_weight(weight, out_axis, weight_max)
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    error = q.astype(np.float64) * scale.reshape(shape) - weight.astype(np.float64)
    if node.op_type == "Conv":
        groups = int(attribute(node, "group", 1))
        c_out, c_in_group = error.shape[0], error.shape[1]
        if mean_x.size != c_in_group * groups or c_out % groups:
            return None
        per_input = error.reshape(c_out, c_in_group, -1).sum(axis=2)  # [C_out, C_in/g], summed over the kernel
        means = mean_x.reshape(groups, c_in_group)[np.arange(c_out) // (c_out // groups)]
        return (per_input * means).sum(axis=1)
    matrix = error if out_axis == 0 else error.T  # Gemm: [N, K]
    return matrix @ mean_x if mean_x.size == matrix.shape[1] else None


def apply_shift(node: ir.Node, shift: np.ndarray, names: NameSource) -> bool:
    """Subtract ``shift`` from ``node``'s bias (adding one if it has none); False if its bias is not per channel."""
    weight = constant_array(node.inputs[1])
    assert weight is not None
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    bias = constant_array(node.inputs[2]) if has_bias else np.zeros(shift.size, weight.dtype)
    if bias is None or bias.shape != shift.shape:
        return False
    set_constant_input(node, 2, (bias - shift).astype(bias.dtype), names, "corrected")
    return True


def channel_means(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel (axis 1) sums of ``array`` and the number of values each sums."""
    array = np.asarray(array)
    others = tuple(i for i in range(array.ndim) if i != 1)
    # summed in float64 without a float64 copy of the whole activation
    return array.sum(axis=others, dtype=np.float64), array.size // max(array.shape[1], 1)
