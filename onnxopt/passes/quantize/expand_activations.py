"""HardSwish, HardSigmoid and PRelu written as ops onnxruntime has integer kernels for, where they run int8.

onnxruntime has no int8 HardSwish or HardSigmoid: a quantized MobileNetV3 runs each one as
``DequantizeLinear -> HardSigmoid, Mul -> QuantizeLinear`` between two integer convolutions (the
orientation classifier: 28 HardSwish, 31 QuantizeLinear and 31 DequantizeLinear kernels left). Written
with Add, Clip and Mul they stay in the int8 chain:

* ``HardSwish(x) = x * Clip(x + 3, 0, 6) * (1/6)``: a QLinearAdd whose output quantizer clamps to [0, 6]
  (the Clip folded into it), a QLinearMul, and the ``1/6`` folded into that QLinearMul's output quantizer
  (:func:`~onnxopt.passes.quantize.insert_qdq.absorb_scalar_products`);
* ``HardSigmoid(x) = Clip(alpha * x + beta, 0, 1)``: ``alpha`` folded into the quantizer of ``x`` when
  it is positive, then one QLinearAdd clamping to [0, 1];
* ``PRelu(x, a) = a * x + (1 - a) * Relu(x)`` with its constant (per-channel) slope: two QLinearMul, a
  requantization for the Relu, a QLinearAdd (``python tools/bench_prelu_int8.py``, four 64-channel blocks at
  56x56, 1 thread: 0.32x fp32, where quantize_static U8S8, each PRelu a float island, runs 0.65x).

The same function up to float rounding (a few units in the last place), far below int8 rounding; only
nodes that keep int8 compute are rewritten (a float one stays one fast kernel). The new tensors' ranges
follow from the calibrated ones, so nothing is calibrated again: ``x + 3`` clamped is ``x``'s range
shifted and clipped to [0, 6]; ``x * Clip(x + 3, 0, 6)`` is six times the HardSwish output's range;
``alpha * x`` is ``x``'s range scaled. The rewritten op's name goes to the node whose integer kernel
computes it (the QLinearMul of a HardSwish, the QLinearAdd of a HardSigmoid), so the audit still finds it.
Only with uint8 activations, where the quantizer can do the Clip's work.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, add_initializer, attribute, constant_array, remove_node_and_orphans
from onnxopt.passes.base import PassLog
from onnxopt.passes.quantize.activation_ranges import Ranges


def expand_hard_activations(
    log: PassLog, graph: ir.Graph, nodes: list[ir.Node], ranges: Ranges, names: NameSource
) -> tuple[list[ir.Node], Ranges]:
    """Rewrite each HardSwish / HardSigmoid among ``nodes`` whose input and output have calibrated ranges;
    returns ``nodes`` with the rewritten ones replaced by their new nodes, and ``ranges`` with the new
    tensors' ranges."""
    ranges = dict(ranges)
    result: list[ir.Node] = []
    for node in nodes:
        x = node.inputs[0] if node.inputs else None
        y = node.outputs[0]
        known = x is not None and x.name in ranges and y.name in ranges and node.domain in ("", "ai.onnx")
        if known and node.op_type == "HardSwish":
            result += _hard_swish(graph, node, ranges, names)
            log.count("HardSwish written as Add, Clip and Mul")
        elif known and node.op_type == "HardSigmoid":
            result += _hard_sigmoid(graph, node, ranges, names)
            log.count("HardSigmoid written as Mul, Add and Clip")
        elif known and node.op_type == "PRelu" and _slope(node) is not None:
            result += _prelu(graph, node, ranges, names)
            log.count("PRelu written as a*x + (1-a)*Relu(x)")
        else:
            result.append(node)
    return result, ranges


def _constant(graph: ir.Graph, names: NameSource, base: str, value: float) -> ir.Value:
    return add_initializer(graph, names.fresh(base), np.array(value, np.float32))


def _replace(graph: ir.Graph, node: ir.Node, new: list[ir.Node], result: ir.Value) -> None:
    """Put ``new`` where ``node`` was; ``result`` (the last new node's output) takes over ``node``'s output,
    its name included."""
    out = node.outputs[0]
    graph.insert_before(node, new)
    for value in (n.outputs[0] for n in new):
        value.dtype, value.shape = out.dtype, out.shape
    ir.convenience.replace_all_uses_with(out, result)
    for i in [i for i, v in enumerate(graph.outputs) if v is out]:
        graph.outputs[i] = result
    remove_node_and_orphans(graph, node)  # detached from its inputs; a slope only it read goes too
    name = out.name
    out.name = None
    result.name = name


def _hard_swish(graph: ir.Graph, node: ir.Node, ranges: Ranges, names: NameSource) -> list[ir.Node]:
    x, base = node.inputs[0], node.name or "hardswish"
    assert x is not None
    low, high = ranges[x.name or ""]
    y_low, y_high = ranges[node.outputs[0].name or ""]
    shifted = ir.node("Add", [x, _constant(graph, names, f"{base}_three", 3.0)], name=names.fresh(f"{base}/add"))
    zero, six = _constant(graph, names, f"{base}_zero", 0.0), _constant(graph, names, f"{base}_six", 6.0)
    gate = ir.node("Clip", [shifted.outputs[0], zero, six], name=names.fresh(f"{base}/clip"))
    product = ir.node("Mul", [x, gate.outputs[0]], name=base)
    scaled = ir.node(
        "Mul", [product.outputs[0], _constant(graph, names, f"{base}_sixth", 1.0 / 6.0)], name=names.fresh(f"{base}/6")
    )
    new = [shifted, gate, product, scaled]
    for n, suffix in zip(new, ("shifted", "gate", "product"), strict=False):
        n.outputs[0].name = names.fresh(f"{base}_{suffix}")
    _replace(graph, node, new, scaled.outputs[0])
    ranges[shifted.outputs[0].name or ""] = (low + 3.0, high + 3.0)
    ranges[gate.outputs[0].name or ""] = (float(np.clip(low + 3.0, 0.0, 6.0)), float(np.clip(high + 3.0, 0.0, 6.0)))
    ranges[product.outputs[0].name or ""] = (6.0 * y_low, 6.0 * y_high)
    return new


def _hard_sigmoid(graph: ir.Graph, node: ir.Node, ranges: Ranges, names: NameSource) -> list[ir.Node]:
    x, base = node.inputs[0], node.name or "hardsigmoid"
    assert x is not None
    alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
    low, high = ranges[x.name or ""]
    scaled = ir.node("Mul", [x, _constant(graph, names, f"{base}_alpha", alpha)], name=names.fresh(f"{base}/alpha"))
    shifted = ir.node("Add", [scaled.outputs[0], _constant(graph, names, f"{base}_beta", beta)], name=base)
    zero, one = _constant(graph, names, f"{base}_zero", 0.0), _constant(graph, names, f"{base}_one", 1.0)
    clipped = ir.node("Clip", [shifted.outputs[0], zero, one], name=names.fresh(f"{base}/clip"))
    new = [scaled, shifted, clipped]
    for n, suffix in zip(new, ("scaled", "shifted"), strict=False):
        n.outputs[0].name = names.fresh(f"{base}_{suffix}")
    _replace(graph, node, new, clipped.outputs[0])
    ends = sorted((alpha * low, alpha * high))
    ranges[scaled.outputs[0].name or ""] = (ends[0], ends[1])
    ranges[shifted.outputs[0].name or ""] = (ends[0] + beta, ends[1] + beta)
    return new


def _slope(node: ir.Node) -> np.ndarray | None:
    """A PRelu's constant float slope, or None."""
    slope = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return slope if slope is not None and slope.dtype.kind == "f" and slope.size else None


def _prelu(graph: ir.Graph, node: ir.Node, ranges: Ranges, names: NameSource) -> list[ir.Node]:
    """``PRelu(x, a) = a * x + (1 - a) * Relu(x)``: two QLinearMul by the (per-tensor quantized) slopes, a
    requantizing Relu and a QLinearAdd, where onnxruntime has no int8 PRelu."""
    x, base = node.inputs[0], node.name or "prelu"
    assert x is not None
    slope = _slope(node)
    assert slope is not None
    low, high = ranges[x.name or ""]
    a = add_initializer(graph, names.fresh(f"{base}_slope"), slope.astype(np.float32))
    rest = add_initializer(graph, names.fresh(f"{base}_one_minus_slope"), (1.0 - slope).astype(np.float32))
    leak = ir.node("Mul", [x, a], name=names.fresh(f"{base}/leak"))
    positive = ir.node("Relu", [x], name=names.fresh(f"{base}/relu"))
    kept = ir.node("Mul", [positive.outputs[0], rest], name=names.fresh(f"{base}/kept"))
    total = ir.node("Add", [leak.outputs[0], kept.outputs[0]], name=base)
    new = [leak, positive, kept, total]
    for n, suffix in zip(new, ("leak", "positive", "kept"), strict=False):
        n.outputs[0].name = names.fresh(f"{base}_{suffix}")
    _replace(graph, node, new, total.outputs[0])
    ranges[leak.outputs[0].name or ""] = _product_range(slope, low, high)
    ranges[positive.outputs[0].name or ""] = (0.0, max(high, 0.0))
    ranges[kept.outputs[0].name or ""] = _product_range(1.0 - slope, 0.0, max(high, 0.0))
    return new


def _product_range(factors: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The range of ``f * x`` for ``f`` among ``factors`` and ``x`` in [low, high]."""
    ends = [float(f) * v for f in (factors.min(), factors.max()) for v in (low, high)]
    return min(ends), max(ends)
