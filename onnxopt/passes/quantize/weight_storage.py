"""Int8 *storage* for weights whose node keeps float compute: a 4x smaller file at float speed.

A weight ``W`` (float32) of a node that runs in float is stored as

    W_q  int8[shape]               round(W / scale), per output channel, |q| <= 127
    W_s  float32[1, .., C, .., 1]  max|W_c| / 127, shaped to broadcast along the channel axis

and rebuilt in the graph with ``Mul(Cast<float>(W_q), W_s)``. Both inputs
are constants, so onnxruntime's constant folding turns the pair into one dense
float initializer when it creates the session: the running graph is the float
one with the rounded weights (the values ``DequantizeLinear`` would give,
bit for bit), and no call pays for the decoding. ``DequantizeLinear`` is
*not* used for this: onnxruntime keeps weight-only DequantizeLinear nodes in
the graph (they are QDQ markers to it) and runs them on every call.

What it stores: input 1 of Conv, ConvTranspose, Gemm and MatMul (per output
channel, :func:`onnxopt.passes.quantize.policy.weight_axes`), inputs 1 and 2 (W, R)
of LSTM, GRU and RNN (per gate row, axis 1), input 0 of a Gather of rows from a matrix (per row: an
embedding table, the exact head rows ``low-rank`` keeps) -- float32 constants of at least
:data:`MIN_ELEMENTS` elements whose storage saves a quarter of their bytes (any size when every weight is
asked for). Declined (left as they are): anything else,
weights read by a node of another kind too, non-finite weights. The cost is
the weight-only rounding error, which the caller measures. Needs a session
with graph optimization on (onnxruntime's default); with it off the decoding
runs every call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import (
    NameSource,
    add_initializer,
    constant_array,
    remove_node_and_orphans,
)
from onnxopt.passes.quantize import policy
from onnxopt.passes.quantize.weight_rounding import quantize_weight

#: Smaller weights stay float; above it a weight is stored when that saves a quarter of its bytes (a
#: depthwise [32, 1, 3, 3] kernel does: 288 + 128 + ~200 bytes against 1,152).
MIN_ELEMENTS = 128


def int8_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales shaped to broadcast along ``axis``): the quantizer's own nearest rounding
    (:func:`onnxopt.passes.quantize.weight_rounding.quantize_weight`, |q| <= 127)."""
    q, scale = quantize_weight(weight, axis, 127)
    return q, _along(scale, weight.ndim, axis)


def _along(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scale.astype(np.float32).reshape(shape)


#: A learned rounding for one weight read by one node: (node, weight, axis) -> (int8, scales along axis) or None.
Rounder = Callable[[ir.Node, np.ndarray, int], "tuple[np.ndarray, np.ndarray] | None"]


def store_weights_int8(
    graph: ir.Graph,
    names: NameSource,
    keep_exact: set[str] = frozenset(),
    *,
    min_elements: int = MIN_ELEMENTS,
    rounder: Rounder | None = None,
) -> list[str]:
    """Store every eligible float weight of ``graph`` (module docstring) of at least ``min_elements`` elements
    as int8 + scale, in place; nodes named in ``keep_exact`` keep their weights exact. ``rounder`` may round a
    weight read by one node better than nearest (GPTQ). Returns the names of the weights stored."""
    stored: list[str] = []
    for node in list(graph):
        if node.name in keep_exact:
            continue
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype != ir.DataType.FLOAT:
                continue
            array = constant_array(value)
            if array is None or array.size < min_elements or not np.isfinite(array).all():
                continue
            axis = _common_axis(value, array.ndim, keep_exact)
            if axis is None or not _worth_storing(array, axis, min_elements):
                continue
            readers = list(value.uses())
            rounded = rounder(readers[0].node, array, axis) if rounder is not None and len(readers) == 1 else None
            decoded = _decoder(graph, names, value.name or f"{node.name}_weight{index}", array, axis, rounded)
            producer = value.producer()
            for use in list(value.uses()):
                use.node.replace_input_with(use.idx, decoded)
            if producer is not None and producer.op_type == "Constant" and not producer.outputs[0].uses():
                remove_node_and_orphans(graph, producer)
            elif value.is_initializer() and not value.uses() and value.name in graph.initializers:
                del graph.initializers[value.name]
            stored.append(value.name or "?")
    return stored


def _worth_storing(array: np.ndarray, axis: int, min_elements: int) -> bool:
    """Whether int8 values, the scales and the two decoding nodes (about 200 bytes) save a quarter of the float
    bytes at least (always true when every weight is asked for, ``min_elements`` 1)."""
    if min_elements <= 1:
        return True
    return array.size + 4 * array.shape[axis] + 200 <= 0.75 * array.nbytes


def _common_axis(value: ir.Value, ndim: int, keep_exact: set[str]) -> int | None:
    """The one axis every reader of ``value`` stores it along; None if a reader is not a storable weight read
    (or is kept exact, or two readers disagree): one rounding must serve them all."""
    if value.is_graph_output():
        return None
    axes = {
        None if use.node.name in keep_exact else policy.storage_axis(use.node, use.idx, ndim) for use in value.uses()
    }
    return axes.pop() if len(axes) == 1 else None


def _decoder(
    graph: ir.Graph,
    names: NameSource,
    base: str,
    array: np.ndarray,
    axis: int,
    rounded: tuple[np.ndarray, np.ndarray] | None = None,
) -> ir.Value:
    q, scale = int8_per_channel(array, axis) if rounded is None else (rounded[0], _along(rounded[1], array.ndim, axis))
    # Short names: on a small net the names of the decoding are a visible part of the file (every name is
    # written once per definition and once per use). ``W_q`` int8, ``W_s`` scale, ``W_qf`` as float, ``W_w``
    # the decoded weight; the nodes are ``W_cast`` and ``W_mul``.
    q_value = add_initializer(graph, names.fresh(f"{base}_q"), q)
    s_value = add_initializer(graph, names.fresh(f"{base}_s"), scale)
    cast = ir.node("Cast", [q_value], attributes={"to": ir.DataType.FLOAT}, name=names.fresh(f"{base}_cast"))
    cast.outputs[0].name = names.fresh(f"{base}_qf")
    mul = ir.node("Mul", [cast.outputs[0], s_value], name=names.fresh(f"{base}_mul"))
    mul.outputs[0].name = names.fresh(f"{base}_w")
    for value in (cast.outputs[0], mul.outputs[0]):
        value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape(array.shape)
    graph.insert_before(next(iter(graph)), [cast, mul])  # reads only constants: first is topologically sound
    return mul.outputs[0]
