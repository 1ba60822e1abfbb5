"""What keeping a node float costs in speed, and the accuracy budget's order by error removed per µs of it.

A node kept float keeps every tensor it reads or writes float (:func:`onnxopt.passes.quantize.insert_qdq.touching`),
so its producers and the other readers of those tensors lose their integer kernels too: keeping a SiLU's Mul
float runs the Conv before it float. What a node costs is therefore its *cascade*'s float time less its int8
time, and that cost shrinks once a neighbour is float already -- which is why the order is built greedily, each
pick lowering the cost of the next ones beside it.

Used by the quantize pass's accuracy budget (:mod:`onnxopt.passes.quantize.search`) where the speed search has
profiled both models. The times are onnxruntime's per-node profile of the float model and of the all-int8 model
(conversions onnxruntime runs on their own charged to the int8 nodes they serve); a node fused into another's
kernel has no time of its own (0).

A float island also has edges: each quantized tensor it writes needs a QuantizeLinear of its own, each it reads a
DequantizeLinear of its own, where int8 kernels would have fused them -- and a layout reorder beside each, since
float kernels run NCHWc and integer ones NHWC. Where the all-int8 profile ran such conversions (its input's
QuantizeLinear, usually), their rate per element prices every edge (:func:`conversion_rate`): an island that
swallows a lone int8 node between two float ones then saves its two conversions, and one that splits an int8
chain pays for them. An estimate, not a verdict: the interleaved timing after the budget judges the model. Not
modelled: a Relu or Clip folded into the int8 kernel before it comes back, with a conversion of its own, when a
reader goes float; a Shape reader needs no DequantizeLinear; a tensor with several float readers is priced one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx_ir as ir

#: A standalone conversion's whole cost -- its Q/DQ kernel and the layout reorder (NCHWc <-> NCHW) onnxruntime
#: runs beside it -- as a multiple of the kernel alone. A judgement from one profile of the glyph detector's mixed
#: model (EPYC, budget ordered without edges): its 67 standalone Q/DQ kernels took 1.6 ms, its layout reorders
#: 5.9 ms, about 4 of them (the float convolutions' share of the float model's 10 ms) inside the float islands.
CONVERSION_LAYOUT_FACTOR = 2.0

#: Added to every node's cost, as a fraction of the float model's total time: an error-adding node that costs
#: nothing (or saves time) is still ranked by its error, not ahead of every other by a division by zero.
COST_FLOOR = 0.01


def cascade(graph: ir.Graph, nodes: Iterable[str], among: Iterable[str]) -> dict[str, set[str]]:
    """Each of ``nodes`` -> the nodes of ``among`` (the quantized ones) that run float when it is kept float:
    itself, the producers of the activations it reads, and every reader of the activations it reads or writes.
    Weights and constants do not spread it: they are rounded per reader, whatever the others run."""
    names, among = set(nodes), set(among)
    found: dict[str, set[str]] = {}
    for node in graph:
        if node.name not in names:
            continue
        touched = {node.name}
        for value in (*node.inputs, *node.outputs):
            if value is None or value.const_value is not None or value.is_initializer():
                continue
            producer = value.producer()
            if producer is not None and producer.name in among:
                touched.add(producer.name)
            touched |= {use.node.name for use in value.uses() if use.node.name in among}
        found[node.name] = touched
    return found


def cheapest_first(
    ranked: list[tuple[str, float]],
    graph: ir.Graph,
    quantized: Iterable[str],
    float_us: Mapping[str, float],
    int8_us: Mapping[str, float],
    *,
    kept_float: Iterable[str] = (),
    conversion_us: Mapping[str, float] | None = None,
) -> list[tuple[str, float]]:
    """``ranked`` ((node, error it adds), from the budget's sensitivity ranking) reordered greedily by error per
    µs: each step picks the node with the most error for the time its cascade still gives up, plus a floor of
    :data:`COST_FLOOR` of the float model's time. Nodes already running float -- beside ``kept_float`` (kept
    float before the budget) or an earlier pick -- cost nothing more. With ``conversion_us`` (a quantized
    tensor's name -> µs of one standalone Q or DQ of it) the time also counts the conversions the pick adds at
    its island's edges, less those it removes (never below 0 in all). Nodes adding no error keep their place
    after the others. Deterministic: ties go by the earlier place in ``ranked``."""
    quantized, kept_float = set(quantized), set(kept_float)
    spread = cascade(graph, quantized, quantized)
    edges = _Edges(graph, quantized, conversion_us or {}, kept_float)
    floor = max(COST_FLOOR * sum(float_us.values()), 1.0)
    running_float = set().union(*cascade(graph, kept_float, quantized).values())
    left = [(name, added) for name, added in ranked if added > 0.0]
    order: list[tuple[str, float]] = []
    while left:
        values = []
        for name, added in left:
            taken = spread.get(name, {name})
            cost = given_up(taken - running_float, float_us, int8_us) + edges.added(name, taken, running_float)
            values.append(added / (max(cost, 0.0) + floor))
        best = max(range(len(left)), key=lambda i: (values[i], -i))
        name, added = left.pop(best)
        order.append((name, added))
        edges.keep_float(name)
        running_float |= spread.get(name, {name})
    return order + [(name, added) for name, added in ranked if added <= 0.0]


def conversion_rate(sizes: Mapping[str, int], measured: Iterable[tuple[str, float]]) -> float | None:
    """µs per element of one standalone conversion at an island's edge: the rate of ``measured`` (a tensor's
    name, µs of one standalone QuantizeLinear or DequantizeLinear onnxruntime ran on it) over the tensors'
    ``sizes`` (elements), times :data:`CONVERSION_LAYOUT_FACTOR`. None when no measured tensor has a size."""
    known = [(us, sizes[name]) for name, us in measured if sizes.get(name)]
    elements = sum(size for _, size in known)
    return CONVERSION_LAYOUT_FACTOR * sum(us for us, _ in known) / elements if elements else None


class _Edges:
    """The standalone conversions around float islands: a quantized tensor (one of ``conversion_us``, not read or
    written by a node kept float) pays a QuantizeLinear when its producer runs float (or is no quantized node),
    and a DequantizeLinear when a reader does (or it is a graph output)."""

    def __init__(
        self, graph: ir.Graph, quantized: set[str], conversion_us: Mapping[str, float], kept_float: Iterable[str]
    ) -> None:
        self.quantized, self.conversion_us = quantized, conversion_us
        self.tensors: dict[str, list[ir.Value]] = {}  # node -> the priced tensors it reads or writes
        for node in graph:
            values = {v.name: v for v in (*node.inputs, *node.outputs) if v is not None and v.name in conversion_us}
            self.tensors[node.name] = [values[name] for name in sorted(values)]
        self.float_tensors = {v.name for name in kept_float for v in self.tensors.get(name, ())}

    def added(self, name: str, taken: set[str], running_float: set[str]) -> float:
        """µs of conversions keeping ``name`` float adds (negative: removes) when ``taken`` (its cascade) joins
        ``running_float``."""
        if not self.conversion_us:
            return 0.0
        around = {v.name: v for m in sorted(taken) for v in self.tensors.get(m, ())}
        values = [around[key] for key in sorted(around)]
        own = {v.name for v in self.tensors.get(name, ())}
        before = self._cost(values, running_float, self.float_tensors)
        return self._cost(values, running_float | taken, self.float_tensors | own) - before

    def keep_float(self, name: str) -> None:
        self.float_tensors |= {v.name for v in self.tensors.get(name, ())}

    def _cost(self, values: list[ir.Value], running_float: set[str], float_tensors: set[str]) -> float:
        total = 0.0
        for value in values:
            if value.name in float_tensors:
                continue
            producer = value.producer()
            if producer is None or producer.name not in self.quantized or producer.name in running_float:
                total += self.conversion_us[value.name]
            readers = (use.node.name for use in value.uses())
            if value.is_graph_output() or any(r not in self.quantized or r in running_float for r in readers):
                total += self.conversion_us[value.name]
        return total


def given_up(nodes: set[str], float_us: Mapping[str, float], int8_us: Mapping[str, float]) -> float:
    """The µs ``nodes`` give up running float instead of int8, together (never below 0: a node fused into a
    float kernel saves its int8 time, but whether the whole gets faster is what counts). Summed in name order:
    the same sum, to the bit, in every process."""
    return max(sum(float_us.get(m, 0.0) - int8_us.get(m, 0.0) for m in sorted(nodes)), 0.0)
