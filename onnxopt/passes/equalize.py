"""Cross-layer equalization (Nagel et al. 2019): even out per-channel weight ranges of consecutive layers.

Matches pairs ``A -> [f ...] -> B`` where

* ``A`` is a Conv (any group), Gemm or 2-D MatMul with a float constant weight
  (and optional constant bias) that nothing else reads;
* ``f`` are zero or more single-reader ops that commute with a positive
  per-channel scale: Relu, LeakyRelu, PRelu (per-channel slope), MaxPool,
  AveragePool, Identity -- never Clip (Relu6), whose bound does not scale;
* ``B`` is a Conv reading the chain as its data input (any group, so
  depthwise-separable blocks ``pointwise -> depthwise -> pointwise`` chain
  through), or a Gemm/MatMul, whose input channels are ``A``'s output channels;
* no tensor of the chain is a graph output (a graph output is never rescaled,
  so the model's outputs keep their values and names).

For each channel ``i`` with ranges ``r1 = max|W_A[i]|`` (A's output channel)
and ``r2 = max|W_B[.., i]|`` (B's input channel), ``s = sqrt(r1 / r2)``;
``W_A[i]`` and ``b_A[i]`` are divided by ``s`` and ``W_B[.., i]`` multiplied by
it, so both ranges become ``sqrt(r1 r2)`` -- per-tensor activation and
per-channel weight quantization then lose less. Because every ``f`` commutes
with positive scales, the model computes the same function: the pass is
lossless and the guard holds it to float rounding. Chains are swept
``iterations`` times (each pair's scaling changes its neighbours' ranges).
Not done: high-bias absorption, Clip/Relu6 chains (declined by construction).

Names keep their meaning: the tensors of a scaled chain (``A``'s output and
every ``f``'s output up to ``B``'s input) now hold the old values divided by
``s`` per channel, so each gets a fresh name with the suffix ``_equalized``.
A per-layer comparison (:mod:`onnxopt.evaluate.layers`) then finds no
counterpart for them in the reference instead of pairing the rescaled tensor
with the unscaled one of the same name and reporting a broken layer. ``B``'s
output is unchanged and keeps its name.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxopt.passes._config import validate_literals
from onnxopt.passes._graph_edit import NameSource, attribute, constant_array
from onnxopt.passes._weights import weight_axes
from onnxopt.passes.base import OptPass, PassLog

_LAYERS = ("Conv", "Gemm", "MatMul")
_SCALE_COMMUTING = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "Identity")
#: Appended to the name of every tensor whose values equalization rescaled.
RENAME_SUFFIX = "_equalized"


@dataclasses.dataclass(frozen=True)
class EqualizeConfig:
    iterations: int = dataclasses.field(
        default=20, metadata={"help": "sweeps over the chains (each pair's scaling changes its neighbours' ranges)"}
    )
    min_range: float = dataclasses.field(
        default=1e-8, metadata={"help": "channels whose range is below this (dead) are left alone"}
    )

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if self.min_range < 0:
            raise ValueError("min_range must be non-negative")


@dataclasses.dataclass
class _Pair:
    first: ir.Node
    second: ir.Node
    channels: int
    chain: list[ir.Value]  # A's output .. the value B reads: all rescaled per channel
    scaled: bool = False


class EqualizeLayersPass(OptPass):
    """Cross-layer equalization of consecutive Conv/Gemm weights through scale-commuting activations."""

    name = "equalize"
    Config = EqualizeConfig

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        pairs = [p for node in model.graph if (p := self._pair_from(node)) is not None]
        if not pairs:
            return
        before = {id(p): self._imbalance(p) for p in pairs}
        for _ in range(self.config.iterations):
            largest = max(self._equalize(p) for p in pairs)
            if largest < 1e-3:  # every scale within 0.1 % of 1: converged
                break
        names = NameSource(model)
        renamed = {id(p): _rename(p.chain, names) if p.scaled else 0 for p in pairs}
        for pair in pairs:
            log.detail(
                first=pair.first.name,
                second=pair.second.name,
                channels=pair.channels,
                range_ratio_before=round(before[id(pair)], 2),
                range_ratio_after=round(self._imbalance(pair), 2),
                tensors_renamed=renamed[id(pair)],
            )
        log.count("layer pairs equalized", len(pairs))

    # ------------------------------------------------------------------ matching

    def _pair_from(self, first: ir.Node) -> _Pair | None:
        if first.op_type not in _LAYERS or first.domain != "" or len(first.inputs) < 2:
            return None
        weight = _private_weight(first, 1)
        if weight is None or (first.op_type == "MatMul" and weight.ndim != 2):
            return None
        if first.op_type == "Gemm" and attribute(first, "transA", 0):
            return None
        out_axis, _ = weight_axes(first, weight.ndim)
        channels = weight.shape[out_axis]
        if first.op_type == "Gemm" and len(first.inputs) > 2 and not _bias_ok(first, channels):
            return None
        has_bias = len(first.inputs) > 2 and first.inputs[2] is not None
        if first.op_type in ("Conv", "MatMul") and has_bias and _private_weight(first, 2) is None:
            return None
        value = first.outputs[0]
        chain = [value]
        while True:
            uses = list(value.uses())
            if value.is_graph_output() or len(uses) != 1:
                return None
            reader = uses[0].node
            if reader.op_type in _SCALE_COMMUTING and reader.domain == "" and uses[0].idx == 0:
                if reader.op_type == "PRelu" and not _per_channel_slope(reader, channels):
                    return None
                value = reader.outputs[0]
                chain.append(value)
                continue
            break
        second = reader
        if second.op_type not in _LAYERS or second.domain != "" or uses[0].idx != 0 or len(second.inputs) < 2:
            return None
        w2 = _private_weight(second, 1)
        if w2 is None or (second.op_type == "MatMul" and w2.ndim != 2):
            return None
        if second.op_type == "Gemm" and attribute(second, "transA", 0):
            return None
        if _input_channels(second, w2) != channels:
            return None
        return _Pair(first, second, channels, chain)

    # ------------------------------------------------------------------ scaling

    def _ranges(self, pair: _Pair) -> tuple[np.ndarray, np.ndarray]:
        w1 = constant_array(pair.first.inputs[1])
        w2 = constant_array(pair.second.inputs[1])
        assert w1 is not None and w2 is not None
        out_axis, _ = weight_axes(pair.first, w1.ndim)
        r1 = np.moveaxis(np.abs(w1), out_axis, 0).reshape(pair.channels, -1).max(axis=1)
        r2 = _per_input_channel(pair.second, np.abs(w2), pair.channels, np.max)
        return r1.astype(np.float64), r2.astype(np.float64)

    def _imbalance(self, pair: _Pair) -> float:
        """Mean over channels of max(r1/r2, r2/r1) after normalizing each layer by its largest range."""
        r1, r2 = self._ranges(pair)
        live = (r1 > self.config.min_range) & (r2 > self.config.min_range)
        if not live.any():
            return 1.0
        a, b = r1[live] / r1[live].max(), r2[live] / r2[live].max()
        return float(np.mean(np.maximum(a / b, b / a)))

    def _equalize(self, pair: _Pair) -> float:
        """Scale one pair; return the largest |log s| applied (0 when already balanced)."""
        r1, r2 = self._ranges(pair)
        live = (r1 > self.config.min_range) & (r2 > self.config.min_range)
        scale = np.ones(pair.channels)
        scale[live] = np.sqrt(r1[live] / r2[live])
        if np.allclose(scale, 1.0):
            return 0.0
        first, second = pair.first, pair.second
        w1 = constant_array(first.inputs[1])
        assert w1 is not None
        out_axis, _ = weight_axes(first, w1.ndim)
        shape = [1] * w1.ndim
        shape[out_axis] = -1
        _set(first, 1, w1 / scale.reshape(shape).astype(w1.dtype))
        bias_index = 2 if len(first.inputs) > 2 and first.inputs[2] is not None else None
        if bias_index is not None:
            bias = constant_array(first.inputs[2])
            assert bias is not None
            _set(first, 2, (bias / _broadcast_bias(bias, scale)).astype(bias.dtype))
        w2 = constant_array(second.inputs[1])
        assert w2 is not None
        _set(second, 1, _scale_input_channels(second, w2, scale))
        pair.scaled = True
        return float(np.max(np.abs(np.log(scale))))


# ---------------------------------------------------------------------- helpers


def _rename(chain: list[ir.Value], names: NameSource) -> int:
    """Give every rescaled tensor of ``chain`` a fresh ``_equalized`` name; return how many were renamed.

    A rescaled tensor no longer means what its old name meant (per-layer
    comparison pairs tensors by name). Graph outputs never get here: a chain
    through one is not equalized (:meth:`EqualizeLayersPass._pair_from`).
    """
    count = 0
    for value in chain:
        assert not value.is_graph_output()
        if value.name:
            value.name = names.fresh(f"{value.name}{RENAME_SUFFIX}")
            count += 1
    return count


def _private_weight(node: ir.Node, index: int) -> np.ndarray | None:
    """Input ``index`` of ``node`` as a float initializer array that no other node reads."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None or not value.is_initializer() or value.is_graph_output() or len(value.uses()) != 1:
        return None
    array = constant_array(value)
    return array if array is not None and array.dtype.kind == "f" else None


def _bias_ok(gemm: ir.Node, channels: int) -> bool:
    """A Gemm's C is per output channel (1-D or a row) and private: it can be scaled with the weight."""
    if gemm.inputs[2] is None:
        return True
    bias = _private_weight(gemm, 2)
    return bias is not None and bias.size == channels and (bias.ndim == 1 or bias.shape[0] == 1)


def _per_channel_slope(prelu: ir.Node, channels: int) -> bool:
    slope = constant_array(prelu.inputs[1]) if len(prelu.inputs) > 1 else None
    return slope is not None and (slope.size == 1 or slope.shape[0] in (1, channels) or slope.size == channels)


def _input_channels(node: ir.Node, weight: np.ndarray) -> int:
    if node.op_type == "Conv":
        return weight.shape[1] * int(attribute(node, "group", 1))
    _, in_axis = weight_axes(node, weight.ndim)
    return weight.shape[in_axis]


def _per_input_channel(node: ir.Node, weight: np.ndarray, channels: int, reduce) -> np.ndarray:
    """``reduce`` over everything but the input channel, for each of the ``channels`` input channels."""
    if node.op_type != "Conv":
        _, in_axis = weight_axes(node, weight.ndim)
        return reduce(np.moveaxis(weight, in_axis, 0).reshape(channels, -1), axis=1)
    groups = int(attribute(node, "group", 1))
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    # [groups, out/g, in/g, k...] -> input channel (g, j) is column j of group g's rows
    grouped = weight.reshape(groups, out_per_group, in_per_group, -1)
    return reduce(np.moveaxis(grouped, 2, 1).reshape(groups * in_per_group, -1), axis=1)


def _scale_input_channels(node: ir.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if node.op_type != "Conv":
        _, in_axis = weight_axes(node, weight.ndim)
        shape = [1] * weight.ndim
        shape[in_axis] = -1
        return (weight * scale.reshape(shape)).astype(weight.dtype)
    groups = int(attribute(node, "group", 1))
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    grouped = weight.reshape(groups, out_per_group, in_per_group, -1)
    factors = scale.reshape(groups, 1, in_per_group, 1)
    return (grouped * factors).reshape(weight.shape).astype(weight.dtype)


def _broadcast_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return scale.reshape(bias.shape) if bias.size == scale.size else scale


def _set(node: ir.Node, index: int, array: np.ndarray) -> None:
    value = node.inputs[index]
    assert value is not None
    value.const_value = ir.tensor(array, name=value.name)
