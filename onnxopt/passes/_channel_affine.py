"""Folding a per-channel affine map ``y = x * s + t`` into a linear op's weights.

Shared by ``fold-bn`` and ``fold-affine``. Two directions:

Backward, into the producer ``x = P(input)`` of the affine:
  * Conv ``x = W*in + B``:            ``W'[o] = W[o] s[o]``, ``B' = B s + t``.
  * ConvTranspose (W is ``[C_in, C_out/g, k..]``, output channel
    ``o = gi*(C_out/g) + j``):       ``W'[gi-block, :, j] = W[..] s[o]``, ``B' = B s + t``.
  * Gemm ``x = a A B + b C`` (N is B's axis 1, or axis 0 with transB):
    ``B' = B s`` along N, ``C' = b C s + t``, ``beta' = 1``.
  * MatMul with a constant 2-D weight, channel = last axis: ``W' = W s``
    (columns); ``t`` becomes a new ``Add`` after it.
  * Add of a constant per-channel bias after any of these
    (``x = P(in) + c``): ``P`` is scaled by ``s`` and ``c' = c s + t``.

Forward, into Conv consumers of ``y`` whose padding is zero (border
positions would otherwise see ``t`` where the original saw 0):
  ``W'[o, i] = W[o, i] s[c(i)]``, ``B'[o] = B[o] + sum_{i,k} W[o, i, k] t[c(i)]``
  where ``c(i)`` is input channel ``i`` of output ``o``'s group.

Weights are computed in at least float32 (float64 weights in float64) and
cast back to their dtype, so fp16 weights are folded in fp32; the small
per-channel vectors are derived in float64. A weight shared with other nodes
is cloned, never changed under another user. Each function returns ``None``
when it folded, or a :class:`~onnxopt.passes.base.Decline` (the value or node
it judged, and why) -- before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, attribute, constant_array, copy_type, set_constant_input
from onnxopt.passes.base import Decline

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class ChannelAffine:
    """``y = x * scale + shift`` along channel ``axis`` (-1: last) of a rank-``rank`` tensor.

    ``scale`` and ``shift`` are vectors of length C, or 1.
    """

    scale: np.ndarray
    shift: np.ndarray
    axis: int = 1
    rank: int | None = None

    def along(self, layout: tuple[int, int | None]) -> bool:
        """Whether this affine's channel axis is the axis of a producer ``(axis, rank)`` layout."""
        if self.channels == 1:
            return True
        axis, rank = layout
        rank = rank if rank is not None else self.rank
        mine = self.axis if self.axis >= 0 or self.rank is None else self.rank + self.axis
        theirs = axis if axis >= 0 or rank is None else rank + axis
        return mine == theirs or (self.axis == axis)

    @property
    def channels(self) -> int:
        return max(self.scale.size, self.shift.size)

    def full(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale and shift broadcast to ``channels`` entries (float64)."""
        s = np.broadcast_to(self.scale.astype(np.float64).reshape(-1), (channels,))
        t = np.broadcast_to(self.shift.astype(np.float64).reshape(-1), (channels,))
        return s, t


def _wide(weight: np.ndarray) -> np.ndarray:
    """The weight in its compute precision: float32 for fp16/fp32, float64 for fp64."""
    return weight.astype(np.promote_types(weight.dtype, np.float32), copy=False)


def _like(vector: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A float64 per-channel vector in the weight's compute precision (avoids widening the weight)."""
    return vector.astype(np.promote_types(weight.dtype, np.float32))


def _declined(judged: ir.Node | ir.Value, reason: str) -> Decline:
    """``judged`` declined for ``reason``, named by its name (an unnamed node by its op type)."""
    fallback = judged.op_type if isinstance(judged, ir.Node) else "value"
    return Decline(judged.name or fallback, reason)


def channel_axis_rank(node: ir.Node) -> tuple[int, int | None] | None:
    """(channel axis, output rank or None) of a foldable linear op; axis -1 means last."""
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = constant_array(node.inputs[1])
        return (1, None if weight is None else weight.ndim)
    if node.op_type == "Gemm":
        return (1, 2)
    if node.op_type == "MatMul":
        shape = node.outputs[0].shape
        return (-1, None if shape is None else len(shape))
    return None


def fold_into_producer(
    value: ir.Value, affine: ChannelAffine, names: NameSource, *, new_bias: bool = True
) -> ir.Value | Decline:
    """Fold ``affine`` applied to ``value`` into the node producing ``value``.

    Returns the value that now holds ``affine(value)`` -- ``value`` itself, or
    the output of a new bias Add after a MatMul -- or why it declined.
    ``new_bias=False`` declines a MatMul without a bias Add when the shift is
    non-zero (the fold would only move the Add, not remove it).
    """
    producer = value.producer()
    if producer is None:
        return _declined(value, "its input is not produced by a node")
    declined = _single_private_use(value)
    if declined:
        return declined
    if producer.op_type == "Add" and producer.domain == "":
        return _fold_into_bias_add(producer, affine, names) or value
    if producer.op_type == "MatMul" and producer.domain == "":
        return _fold_matmul_with_bias(producer, affine, names, new_bias=new_bias)
    return _fold_into_linear(producer, affine, names) or value


def _single_private_use(value: ir.Value) -> Decline | None:
    if value.is_graph_output():
        return _declined(value, f"'{value.name}' is a graph output")
    if len(value.uses()) != 1:
        uses = len(value.uses())
        return _declined(value, f"'{value.name}' has {uses} consumers; scaling its producer would change the others")
    return None


def _fold_into_linear(node: ir.Node, affine: ChannelAffine, names: NameSource) -> Decline | None:
    """Scale ``node``'s output channels by ``affine`` (a MatMul only when the shift is zero)."""
    if node.domain != "" or node.op_type not in LINEAR_OPS:
        return _declined(node, f"producer {node.op_type} is not Conv/ConvTranspose/Gemm/MatMul")
    weight = constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None or weight.dtype.kind != "f":
        return _declined(node, f"{node.op_type} weight is not a float constant")
    layout = channel_axis_rank(node)
    assert layout is not None
    if not affine.along(layout):
        return _declined(node, f"the affine's channel axis is not {node.op_type}'s output-channel axis")
    if node.op_type == "Conv":
        return _fold_conv(node, weight, affine, names)
    if node.op_type == "ConvTranspose":
        return _fold_conv_transpose(node, weight, affine, names)
    if node.op_type == "Gemm":
        return _fold_gemm(node, weight, affine, names)
    return _fold_matmul(node, weight, affine, names)


def _check_channels(node: ir.Node, affine: ChannelAffine, channels: int, what: str) -> Decline | None:
    if affine.channels not in (1, channels):
        return _declined(node, f"{affine.channels} affine channels do not match {channels} {what} channels")
    return None


def _bias(node: ir.Node, index: int, channels: int) -> np.ndarray | Decline:
    if index >= len(node.inputs) or node.inputs[index] is None:
        return np.zeros(channels)
    bias = constant_array(node.inputs[index])
    if bias is None:
        return _declined(node, f"{node.op_type} bias is not a constant")
    return bias.astype(np.float64)


def _fold_conv(node: ir.Node, weight: np.ndarray, affine: ChannelAffine, names: NameSource) -> Decline | None:
    channels = weight.shape[0]
    bias = _bias(node, 2, channels)
    declined = _check_channels(node, affine, channels, "output") or (bias if isinstance(bias, Decline) else None)
    if declined:
        return declined
    s, t = affine.full(channels)
    new_w = _wide(weight) * _like(s, weight).reshape(-1, *[1] * (weight.ndim - 1))
    new_b = np.broadcast_to(bias, (channels,)) * s + t
    set_constant_input(node, 1, new_w.astype(weight.dtype, copy=False), names, "folded")
    _set_bias(node, 2, new_b.astype(weight.dtype, copy=False), names)
    return None


def _set_bias(node: ir.Node, index: int, bias: np.ndarray, names: NameSource) -> None:
    """Set a bias input, without adding an all-zero bias where the node had none."""
    absent = index >= len(node.inputs) or node.inputs[index] is None
    if absent and not np.any(bias):
        return
    set_constant_input(node, index, bias, names, "folded")


def _fold_conv_transpose(node: ir.Node, weight: np.ndarray, affine: ChannelAffine, names: NameSource) -> Decline | None:
    group = node.attributes.get_int("group", 1)
    per_group = weight.shape[1]
    channels = per_group * group
    bias = _bias(node, 2, channels)
    declined = _check_channels(node, affine, channels, "output") or (bias if isinstance(bias, Decline) else None)
    if declined:
        return declined
    s, t = affine.full(channels)
    blocks = _wide(weight).reshape(group, weight.shape[0] // group, per_group, *weight.shape[2:])
    blocks = blocks * _like(s, weight).reshape(group, 1, per_group, *[1] * (weight.ndim - 2))
    new_b = np.broadcast_to(bias, (channels,)) * s + t
    set_constant_input(node, 1, blocks.reshape(weight.shape).astype(weight.dtype, copy=False), names, "folded")
    _set_bias(node, 2, new_b.astype(weight.dtype, copy=False), names)
    return None


def _fold_gemm(node: ir.Node, weight: np.ndarray, affine: ChannelAffine, names: NameSource) -> Decline | None:
    trans_b = node.attributes.get_int("transB", 0)
    channels = weight.shape[0] if trans_b else weight.shape[1]
    beta = node.attributes.get_float("beta", 1.0)
    c = _bias(node, 2, channels)
    declined = _check_channels(node, affine, channels, "output") or (c if isinstance(c, Decline) else None)
    if declined:
        return declined
    s, t = affine.full(channels)
    s_w = _like(s, weight)
    new_w = _wide(weight) * (s_w.reshape(-1, 1) if trans_b else s_w.reshape(1, -1))
    new_c = beta * c * s + t  # broadcasts C ([N], [1,N], [M,N], scalar) against the channel axis
    set_constant_input(node, 1, new_w.astype(weight.dtype, copy=False), names, "folded")
    _set_bias(node, 2, np.asarray(new_c).astype(weight.dtype, copy=False), names)
    node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return None


def _fold_matmul(node: ir.Node, weight: np.ndarray, affine: ChannelAffine, names: NameSource) -> Decline | None:
    if weight.ndim != 2:
        return _declined(node, f"MatMul weight has rank {weight.ndim}, expected 2")
    channels = weight.shape[1]
    declined = _check_channels(node, affine, channels, "output")
    if declined:
        return declined
    s, t = affine.full(channels)
    if np.any(t != 0):
        return _declined(node, "MatMul has no bias to absorb the shift")
    new_w = _wide(weight) * _like(s, weight).reshape(1, -1)
    set_constant_input(node, 1, new_w.astype(weight.dtype, copy=False), names, "folded")
    return None


def _fold_matmul_with_bias(
    node: ir.Node, affine: ChannelAffine, names: NameSource, *, new_bias: bool
) -> ir.Value | Decline:
    """Scale the MatMul's weight; put a non-zero shift in a new bias Add (if ``new_bias``)."""
    scale_only = ChannelAffine(affine.scale, np.zeros(1), affine.axis, affine.rank)
    has_shift = bool(np.any(affine.shift != 0))
    if has_shift and not new_bias:
        return _declined(node, "MatMul has no bias Add to absorb the shift")
    declined = _fold_into_linear(node, scale_only, names)
    if declined:
        return declined
    out = node.outputs[0]
    if not has_shift:
        return out
    weight = constant_array(node.inputs[1])
    assert weight is not None
    _, t = affine.full(weight.shape[1])
    graph = node.graph
    assert graph is not None
    bias_name = names.fresh(f"{node.name or 'MatMul'}_bias")
    bias = ir.Value(name=bias_name, const_value=ir.tensor(t.astype(weight.dtype, copy=False), name=bias_name))
    graph.register_initializer(bias)
    add = ir.node("Add", [out, bias], name=names.fresh(f"{node.name or 'MatMul'}_bias_add"))
    add.outputs[0].name = names.fresh(f"{out.name}_biased")
    copy_type(out, add.outputs[0])
    graph.insert_after(node, add)
    return add.outputs[0]


def _fold_into_bias_add(add: ir.Node, affine: ChannelAffine, names: NameSource) -> Decline | None:
    """``y = (P(in) + c) * s + t`` -> ``P'(in) + c'`` with ``P' = P * s`` and ``c' = c s + t``."""
    for data_index in (0, 1):
        data, const_value = add.inputs[data_index], add.inputs[1 - data_index]
        c = constant_array(const_value)
        if data is None or c is None or data.producer() is None:
            continue
        producer = data.producer()
        assert producer is not None
        layout = channel_axis_rank(producer) if producer.domain == "" else None
        if layout is None:
            return _declined(add, f"Add's input comes from {producer.op_type}, not a linear op")
        if not per_channel(c, axis=layout[0], rank=layout[1]):
            return _declined(add, f"Add constant of shape {list(c.shape)} is not a per-channel bias")
        declined = _single_private_use(data)
        if declined:
            return declined
        if c.size > 1 and affine.channels > 1 and c.size != affine.channels:
            return _declined(add, f"Add bias has {c.size} channels, the affine {affine.channels}")
        unit = ChannelAffine(affine.scale, np.zeros(1), affine.axis, affine.rank)
        declined = _fold_into_linear(producer, unit, names)
        if declined:
            return declined
        s, t = affine.full(max(affine.channels, c.size))
        new_c = c.reshape(-1).astype(np.float64) * s + t
        shape = c.shape if c.size == new_c.size else _channel_shape(layout, new_c.size)
        set_constant_input(add, 1 - data_index, new_c.reshape(shape).astype(c.dtype), names, "folded")
        return None
    return _declined(add, "Add has no constant bias operand")


def _channel_shape(layout: tuple[int, int | None], size: int) -> tuple[int, ...]:
    """Shape of a length-``size`` vector that broadcasts along a ``(axis, rank)`` layout's channel axis."""
    axis, rank = layout
    if axis == -1 or rank is None:
        return (size,)
    return (size,) + (1,) * (rank - axis - 1)


def per_channel(c: np.ndarray, *, axis: int, rank: int | None) -> bool:
    """Whether constant ``c`` broadcast against a rank-``rank`` tensor varies only along ``axis``."""
    if c.ndim == 0 or c.size == 1:
        return rank is None or c.ndim <= rank
    if axis == -1:
        return (rank is None and c.ndim <= 1) or (
            rank is not None and c.ndim <= rank and all(d == 1 for d in c.shape[:-1])
        )
    if rank is None or c.ndim > rank:
        return False
    aligned = (1,) * (rank - c.ndim) + c.shape
    return all(d == 1 for i, d in enumerate(aligned) if i != axis)


def fold_into_consumer_convs(value: ir.Value, affine: ChannelAffine, names: NameSource) -> Decline | None:
    """Fold ``affine`` (applied to produce ``value``) into every consumer, all zero-padding Convs."""
    if value.is_graph_output():
        return _declined(value, f"'{value.name}' is a graph output")
    consumers = [use.node for use in value.uses()]
    if not consumers:
        return _declined(value, "no consumers")
    plans = []
    for conv in consumers:
        declined = _forward_decline(conv, value)
        if declined:
            return declined
        weight = constant_array(conv.inputs[1])
        assert weight is not None
        group = conv.attributes.get_int("group", 1)
        channels = weight.shape[1] * group
        declined = _check_channels(conv, affine, channels, "Conv input")
        if declined:
            return declined
        bias = _bias(conv, 2, weight.shape[0])
        if isinstance(bias, Decline):
            return bias
        plans.append((conv, weight, group, channels, bias))
    for conv, weight, group, channels, bias in plans:
        s, t = affine.full(channels)
        out_per_group = weight.shape[0] // group
        group_of_output = np.arange(weight.shape[0]) // out_per_group
        s_io = s.reshape(group, -1)[group_of_output]  # [C_out, C_in/g]
        t_io = t.reshape(group, -1)[group_of_output]
        w64 = _wide(weight)
        extra = [1] * (weight.ndim - 2)
        new_w = w64 * _like(s_io, weight).reshape(*s_io.shape, *extra)
        new_b = np.broadcast_to(bias, (weight.shape[0],)) + (w64 * t_io.reshape(*t_io.shape, *extra)).reshape(
            weight.shape[0], -1
        ).sum(axis=1)
        set_constant_input(conv, 1, new_w.astype(weight.dtype, copy=False), names, "folded")
        set_constant_input(conv, 2, new_b.astype(weight.dtype, copy=False), names, "folded")
    return None


def _forward_decline(conv: ir.Node, value: ir.Value) -> Decline | None:
    """Why the affine producing ``value`` cannot move into its consumer ``conv``, or None."""
    if conv.op_type != "Conv" or conv.domain != "":
        return _declined(conv, f"a consumer is {conv.op_type}, not Conv")
    if conv.inputs[0] is not value or any(v is value for v in conv.inputs[1:]):
        return _declined(conv, "the value is not only the Conv's data input")
    weight = constant_array(conv.inputs[1])
    if weight is None or weight.dtype.kind != "f":
        return _declined(conv, "Conv weight is not a float constant")
    auto_pad = attribute(conv, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return _declined(conv, f"Conv auto_pad={auto_pad} pads with zeros that the shift would have moved")
    pads = attribute(conv, "pads", None)
    if pads is not None and any(int(p) != 0 for p in pads):  # type: ignore[attr-defined]
        return _declined(conv, "Conv pads with zeros that the shift would have moved")
    return None
