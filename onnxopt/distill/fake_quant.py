"""QuantizeLinear and DequantizeLinear in the trainable twin: onnxruntime's integers, trainable as fake quantization.

The ops compute exactly what onnxruntime computes (float32, no fixed point):

* ``QuantizeLinear``: ``q = saturate(round_half_to_even(x / s) + z)`` to the zero point's type (uint8
  ``[0, 255]``, int8 ``[-128, 127]``, int16, int32), per tensor or along ``axis`` (default 1). The twin
  keeps ``q`` as float32 holding the integer levels;
* ``DequantizeLinear``: ``(q - z) * s``, per tensor or along ``axis``.

Gradients (:class:`FakeQuant`, when the twin trains a quantized graph): the rounding passes the gradient
straight through, the saturation stops it (zero where clamped). A scale ``s`` learned (``learn_scales``)
gets LSQ's step-size gradient (Esser et al. 2020) -- the exact derivative of ``(q - z) * s`` through the
straight-through rounding: ``(q - z) - x / s`` inside the range, ``(q - z)`` where clamped -- multiplied by
LSQ's gradient scale ``g = 1 / sqrt(N * Q_p)`` (``N`` elements per sample or per channel, ``Q_p`` the top
level). A learned scale is ``s0 * m`` with a trainable multiplier ``m`` (1 at the start, so the twin starts on
the stored scale bit for bit; Adam's steps on ``m`` are relative, whatever the scale's magnitude). Scales of
a data-movement op's input and output that the quantizer made equal (MaxPool, Reshape, ...: onnxruntime runs
those on int8 only while they are) share one multiplier. Zero points are kept.

Constant integers read by one DequantizeLinear become float *shadow* variables ``(q - z) * s`` and are
fake-quantized in the forward pass to the levels they may take:

* int8 with zero point 0 (weights, per output channel): symmetric, ``[-M, M]`` with ``M`` = 63 when every
  stored level is within 63 (7-bit weights, CPUs without VNNI), else 127 -- the quantizer's own bound;
* int32 (biases): at ``s_x * s_w`` -- the scales of the input and weight their Conv/ConvTranspose/Gemm
  reads, recomputed as those scales learn -- when the stored scale is that product; else at the stored scale;
* anything else (a uint8 constant of an Add or Mul): the type's whole range at its stored zero point.

:meth:`FakeQuant.export` turns the variables back into the graph's initializers: levels (same integer
type), learned scales, and biases' scales ``s_x * s_w`` -- computed by the same TensorFlow ops as the forward
pass, so onnxruntime then reads exactly the integers the twin used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import UnsupportedOp

#: data-movement ops onnxruntime runs directly on int8 while their input and output share scale and zero point
CARRIED = frozenset({
    "MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Split", "Resize", "Identity", "Expand", "Pad", "DepthToSpace", "SpaceToDepth", "Tile",
})  # fmt: skip
#: key suffix of a learned scale's multiplier among the twin's variables
MULTIPLIER = "::scale_multiplier"
_MIN_MULTIPLIER = 1e-2  # a scale never shrinks below a hundredth of where it started
_BIAS_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})


@dataclasses.dataclass(frozen=True)
class Shadow:
    """A constant integer tensor trained as floats: how it is read and which levels it may take."""

    name: str  # the integer initializer
    scale: str  # its DequantizeLinear's scale initializer
    zero: np.ndarray  # its zero point (kept)
    dtype: np.dtype  # the stored integer type
    low: int
    high: int
    axis: int | None  # the per-channel axis; None: per tensor
    bias_of: tuple[str, str] | None = None  # (input scale, weight scale) of an int32 bias at s_x * s_w


def level_range(dtype: np.dtype, zero: np.ndarray, levels: np.ndarray | None = None) -> tuple[int, int]:
    """The levels a tensor of ``dtype`` may take: the type's range, or ``[-M, M]`` for a signed constant with a
    zero point of 0 (``M`` 63 when every stored level is within 63, else the type's top)."""
    info = np.iinfo(dtype)
    if levels is None or info.min >= 0 or np.any(zero) or dtype == np.int32:
        return int(info.min), int(info.max)
    peak = int(np.abs(levels.astype(np.int64)).max(initial=0))
    top = 63 if dtype == np.int8 and peak <= 63 else int(info.max)
    return -top, top


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


class FakeQuant:
    """The trainable state of a QDQ graph's twin: shadow variables and learned scales (module docstring)."""

    def __init__(self, tf: Any, graph: onnx.GraphProto, initializers: dict[str, np.ndarray], *, learn_scales: bool):
        self.tf = tf
        self._arrays = initializers
        readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        producers = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            for i, name in enumerate(node.input):
                readers.setdefault(name, []).append((node, i))
        self.shadows: dict[str, Shadow] = {}
        initial: dict[str, np.ndarray] = {}
        self.units: dict[str, np.ndarray] = {}  # what one unit of each shadow variable is worth (broadcast)
        for name, array in initializers.items():
            shadow = self._shadow(name, array, readers, producers)
            if shadow is not None:
                self.shadows[name] = shadow
                scale = initializers[shadow.scale].astype(np.float32)
                zero = shadow.zero.astype(np.float32).reshape(_along(shadow.zero, array.ndim, shadow.axis))
                value = (array.astype(np.float32) - zero) * scale.reshape(_along(scale, array.ndim, shadow.axis))
                self.units[name] = _unit(shadow, value, scale.reshape(_along(scale, array.ndim, shadow.axis)))
                initial[name] = value / self.units[name]
        self.roots: dict[str, str] = {}  # learned scale -> the scale whose multiplier it uses
        if learn_scales:
            bias_scales = {s.scale for s in self.shadows.values() if s.dtype == np.int32}
            for name, uses in sorted(readers.items()):
                array = initializers.get(name)
                if (
                    array is not None and name not in bias_scales and array.dtype == np.float32
                    and all(n.op_type in ("QuantizeLinear", "DequantizeLinear") and i == 1 for n, i in uses)
                    and np.all(np.isfinite(array)) and np.all(array > 0)
                ):  # fmt: skip
                    self.roots[name] = name
            self._tie(graph, readers, producers)
        self.variables: dict[str, Any] = {
            name: tf.Variable(value, name=f"shadow_{i}", trainable=True)
            for i, (name, value) in enumerate(sorted(initial.items()))
        }
        for i, root in enumerate(sorted(set(self.roots.values()))):
            ones = np.ones(initializers[root].shape, np.float32)
            self.variables[root + MULTIPLIER] = tf.Variable(ones, name=f"multiplier_{i}", trainable=True)
        self._constants = {name: tf.constant(initializers[name]) for name in self._scale_names()}

    # ------------------------------------------------------------------ construction

    def _shadow(self, name, array, readers, producers) -> Shadow | None:
        """``name`` as a shadow when it is an integer constant read once, as a DequantizeLinear's input 0."""
        uses = readers.get(name, [])
        if array.dtype.kind not in "iu" or len(uses) != 1:
            return None
        dq, index = uses[0]
        if dq.op_type != "DequantizeLinear" or index != 0 or dq.domain not in ("", "ai.onnx"):
            return None
        scale = self._arrays.get(dq.input[1])
        zero = self._arrays.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), array.dtype)
        if scale is None or zero is None or scale.dtype != np.float32 or len(readers.get(dq.input[1], [])) != 1:
            return None  # a scale another node reads too stays as it is
        if _int_attr(dq, "block_size", 0):
            return None
        axis = _int_attr(dq, "axis", 1) % max(array.ndim, 1) if scale.ndim == 1 else None
        low, high = level_range(array.dtype, zero, array)
        bias_of = self._bias_link(dq, array, scale, readers, producers) if array.dtype == np.int32 else None
        return Shadow(name, dq.input[1], zero, array.dtype, low, high, axis, bias_of)

    def _bias_link(self, dq, levels, scale, readers, producers) -> tuple[str, str] | None:
        """(input scale, weight scale) when ``dq`` is the bias of a Conv/ConvTranspose/Gemm whose stored scale is
        the product of its input's (per tensor) and weight's scales."""
        uses = readers.get(dq.output[0], [])
        if len(uses) != 1 or uses[0][1] != 2 or uses[0][0].op_type not in _BIAS_OPS:
            return None
        layer = uses[0][0]
        x_dq, w_dq = (producers.get(layer.input[i]) for i in (0, 1))
        if x_dq is None or w_dq is None or {x_dq.op_type, w_dq.op_type} != {"DequantizeLinear"}:
            return None
        s_x, s_w = self._arrays.get(x_dq.input[1]), self._arrays.get(w_dq.input[1])
        if s_x is None or s_w is None or s_x.size != 1 or s_w.size not in (1, levels.size) or levels.ndim != 1:
            return None
        product = (s_x.reshape(()) * s_w).astype(np.float32)
        if product.size != scale.size or not np.allclose(product.reshape(-1), scale.reshape(-1), rtol=1e-6, atol=0):
            return None
        return x_dq.input[1], w_dq.input[1]

    def _tie(self, graph, readers, producers) -> None:
        """A data-movement op's output scale joins its input's when the quantizer made them equal."""
        for node in graph.node:
            if node.op_type not in CARRIED or not node.input or not node.output:
                continue
            before = producers.get(node.input[0])
            if before is None or before.op_type != "DequantizeLinear" or before.input[1] not in self.roots:
                continue
            for after, index in readers.get(node.output[0], []):
                if after.op_type != "QuantizeLinear" or index != 0 or after.input[1] not in self.roots:
                    continue
                a, b = (self._arrays[n.input[1]] for n in (before, after))
                za, zb = (self._zero(n) for n in (before, after))
                if a.shape == b.shape and np.array_equal(a, b) and np.array_equal(za, zb):
                    root_a, root_b = self.roots[before.input[1]], self.roots[after.input[1]]
                    for name, root in self.roots.items():
                        if root == root_b:
                            self.roots[name] = root_a

    def _zero(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self._arrays.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    def _scale_names(self) -> set[str]:
        names = set(self.roots)
        for shadow in self.shadows.values():
            names.add(shadow.scale)
            names.update(shadow.bias_of or ())
        return names

    # ------------------------------------------------------------------ forward

    def value(self, name: str):
        """The scale ``name`` as the twin uses it now (its multiplier applied when learned)."""
        if name not in self.roots:
            return self._constants[name]
        multiplier = self.variables[self.roots[name] + MULTIPLIER]
        return self._constants[name] * self.tf.maximum(multiplier, _MIN_MULTIPLIER)

    def scale(self, name: str, given, count: int, top: int):
        """The scale ``name`` for one quantizer: learned with LSQ's gradient scale ``1 / sqrt(count * top)``,
        or ``given`` (the graph's constant) when it is not learned."""
        if name not in self.roots:
            return given
        multiplier = _scaled_gradient(self.tf, self.variables[self.roots[name] + MULTIPLIER],
                                      1.0 / np.sqrt(max(count, 1) * max(top, 1)))  # fmt: skip
        return self._constants[name] * self.tf.maximum(multiplier, _MIN_MULTIPLIER)

    def dequantize_shadow(self, shadow: Shadow, variable):
        """The fake-quantized shadow: its current levels at its current scale, as the graph will store them."""
        levels, scale, zero = self._levels(shadow, variable, train=True)
        return (levels - zero) * scale

    def _levels(self, shadow: Shadow, variable, *, train: bool):
        """(levels, scale, zero point) of a shadow now, shaped to broadcast against it."""
        tf = self.tf
        value = variable * self.units[shadow.name]
        rank = value.shape.rank
        if shadow.bias_of is not None:
            s_x, s_w = (self.value(n) for n in shadow.bias_of)
            scale = tf.stop_gradient(tf.reshape(s_x, []) * s_w)
        elif train:
            channels = int(value.shape[shadow.axis]) if shadow.axis is not None else 1
            count = int(np.prod(value.shape)) // max(channels, 1)
            scale = self.scale(shadow.scale, self._constants[shadow.scale], count, shadow.high)
        else:
            scale = self.value(shadow.scale)
        scale = tf.reshape(scale, _along(self._arrays[shadow.scale], rank, shadow.axis))
        zero = tf.reshape(tf.constant(shadow.zero.astype(np.float32)), _along(shadow.zero, rank, shadow.axis))
        rounded = round_ste(tf, value / scale) if train else tf.round(value / scale)
        levels = tf.clip_by_value(rounded + zero, float(shadow.low), float(shadow.high))
        return levels, scale, zero

    # ------------------------------------------------------------------ write-back

    def export(self) -> dict[str, np.ndarray]:
        """The initializers the twin changes, as the graph stores them: every shadow's levels (its integer type),
        every learned scale, and each linked bias's scale ``s_x * s_w``."""
        out: dict[str, np.ndarray] = {}
        for name in self.roots:
            out[name] = self.value(name).numpy().astype(np.float32).reshape(self._arrays[name].shape)
        for name, shadow in self.shadows.items():
            levels, scale, _ = self._levels(shadow, self.variables[name], train=False)
            out[name] = levels.numpy().astype(shadow.dtype)
            if shadow.bias_of is not None:
                out[shadow.scale] = scale.numpy().astype(np.float32).reshape(self._arrays[shadow.scale].shape)
        return out


def _unit(shadow: Shadow, value: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What one unit of a shadow's variable is worth: its stored step (Adam's steps are then in levels, whatever
    the layer's scale); for an int32 bias, whose step ``s_x * s_w`` is far below what moves an output, an 8-bit
    step of its own range."""
    if shadow.dtype != np.int32:
        return scale.astype(np.float32)
    peak = float(np.abs(value).max(initial=0.0))
    return np.asarray(peak / 127.0 if peak > 0 else 1.0, np.float32)


def _along(scale: np.ndarray, rank: int, axis: int | None) -> list[int]:
    """The shape that broadcasts a per-tensor scale (``axis`` None) or a per-``axis`` vector against a rank-``rank``
    tensor."""
    return [] if np.ndim(scale) == 0 else _broadcast(rank, axis)


def round_ste(tf: Any, x):
    """``round_half_to_even(x)``, its gradient passed straight through."""

    @tf.custom_gradient
    def rounded(v):
        return tf.round(v), lambda dy: dy

    return rounded(x)


def _scaled_gradient(tf: Any, x, factor: float):
    """``x`` itself, its gradient multiplied by ``factor``."""

    @tf.custom_gradient
    def scaled(v):
        return tf.identity(v), lambda dy: dy * factor

    return scaled(x)


# ---------------------------------------------------------------------- the ops


def _zero_point(tf: Any, node: onnx.NodeProto, inputs: list, attrs: dict) -> tuple[Any, np.dtype]:
    """The zero point (float32) and the integer type of a Q/DQ node."""
    zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    if zero is not None:
        dtype = np.dtype(zero.dtype.as_numpy_dtype)
    else:
        to = int(attrs.get("output_dtype", onnx.TensorProto.UINT8) or onnx.TensorProto.UINT8)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if dtype.kind not in "iu":
        raise UnsupportedOp(f"fine-tuning: {node.op_type} {node.name!r} to {dtype} (integer types only)")
    return (tf.cast(zero, tf.float32) if zero is not None else tf.zeros([], tf.float32)), dtype


def _axis(node: onnx.NodeProto, attrs: dict, scale, rank: int) -> int | None:
    if int(attrs.get("block_size", 0) or 0):
        raise UnsupportedOp(f"fine-tuning: {node.op_type} {node.name!r} with block_size (blocked quantization)")
    return int(attrs.get("axis", 1)) % max(rank, 1) if scale.shape.rank == 1 else None


def _broadcast(rank: int, axis: int | None) -> list[int]:
    """The shape a scale takes against a rank-``rank`` tensor: a scalar, or a vector along ``axis``."""
    if axis is None:
        return []
    shape = [1] * rank
    shape[axis] = -1
    return shape


def _broadcast_zero(zero, shape: list[int]) -> list[int]:
    return shape if zero.shape.rank else []


def _per_sample(x, axis: int | None) -> int:
    dims = [int(d) for d in x.shape[1:]] if x.shape.rank else []
    channels = int(x.shape[axis]) if axis is not None and axis > 0 else 1
    return int(np.prod(dims)) // max(channels, 1)


def quantize_linear(m: Any, node: onnx.NodeProto, inputs: list, attrs: dict):
    """onnxruntime's QuantizeLinear; the levels as float32 (straight-through rounding, saturation stops)."""
    tf = m.tf
    x, given = inputs[0], inputs[1]
    zero, dtype = _zero_point(tf, node, inputs, attrs)
    low, high = level_range(dtype, np.zeros(()))
    axis = _axis(node, attrs, given, x.shape.rank)
    quant = getattr(m, "quant", None)
    scale = quant.scale(node.input[1], given, _per_sample(x, axis), high) if quant is not None else given
    shape = _broadcast(x.shape.rank, axis)
    scale, zero = (
        tf.reshape(tf.cast(scale, x.dtype), shape),
        tf.reshape(tf.cast(zero, x.dtype), _broadcast_zero(zero, shape)),
    )
    return tf.clip_by_value(round_ste(tf, x / scale) + zero, float(low), float(high))


def dequantize_linear(m: Any, node: onnx.NodeProto, inputs: list, attrs: dict):
    """onnxruntime's DequantizeLinear: ``(q - z) * s``; a shadow (a trained constant) fake-quantized first."""
    tf = m.tf
    quant = getattr(m, "quant", None)
    if quant is not None and node.input[0] in quant.shadows:
        return quant.dequantize_shadow(quant.shadows[node.input[0]], inputs[0])
    q, given = inputs[0], inputs[1]
    zero, dtype = _zero_point(tf, node, inputs, attrs)
    axis = _axis(node, attrs, given, q.shape.rank)
    scale = given
    if quant is not None:
        scale = quant.scale(node.input[1], given, _per_sample(q, axis), level_range(dtype, np.zeros(()))[1])
    shape = _broadcast(q.shape.rank, axis)
    levels = tf.cast(q, tf.float32)
    return (levels - tf.reshape(zero, _broadcast_zero(zero, shape))) * tf.reshape(tf.cast(scale, tf.float32), shape)
