"""What keeping a node float costs in speed, and the accuracy budget's order by error removed per µs of it.

A node kept float keeps every tensor it reads or writes float (:func:`onnxopt.passes.quantize.insert_qdq.touching`),
so its producers and the other readers of those tensors lose their integer kernels too: keeping a SiLU's Mul
float runs the Conv before it float. What a node costs is therefore its *cascade*'s float time less its int8
time, and that cost shrinks once a neighbour is float already -- which is why the order is built greedily, each
pick lowering the cost of the next ones beside it.

Used by the quantize pass's accuracy budget (:mod:`onnxopt.passes.quantize.search`) where the speed search has
profiled both models. The times are onnxruntime's per-node profile of the float model and of the all-int8 model
(conversions onnxruntime runs on their own charged to the int8 nodes they serve); a node fused into another's
kernel has no time of its own (0). The Q/DQ kernels a new float island adds at its edges are not modelled: the
interleaved timing after the budget judges the model that results, not this estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx_ir as ir

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
) -> list[tuple[str, float]]:
    """``ranked`` ((node, error it adds), from the budget's sensitivity ranking) reordered greedily by error per
    µs: each step picks the node with the most error for the time its cascade still gives up, plus a floor of
    :data:`COST_FLOOR` of the float model's time. Nodes already running float -- beside ``kept_float`` (kept
    float before the budget) or an earlier pick -- cost nothing more. Nodes adding no error keep their place
    after the others. Deterministic: ties go by the earlier place in ``ranked``."""
    quantized = set(quantized)
    spread = cascade(graph, quantized, quantized)
    floor = max(COST_FLOOR * sum(float_us.values()), 1.0)
    running_float = set().union(*cascade(graph, kept_float, quantized).values())
    left = [(name, added) for name, added in ranked if added > 0.0]
    order: list[tuple[str, float]] = []
    while left:
        values = [added / (given_up(spread.get(name, {name}) - running_float, float_us, int8_us) + floor)
                  for name, added in left]  # fmt: skip
        best = max(range(len(left)), key=lambda i: (values[i], -i))
        name, added = left.pop(best)
        order.append((name, added))
        running_float |= spread.get(name, {name})
    return order + [(name, added) for name, added in ranked if added <= 0.0]


def given_up(nodes: set[str], float_us: Mapping[str, float], int8_us: Mapping[str, float]) -> float:
    """The µs ``nodes`` give up running float instead of int8, together (never below 0: a node fused into a
    float kernel saves its int8 time, but whether the whole gets faster is what counts). Summed in name order:
    the same sum, to the bit, in every process."""
    return max(sum(float_us.get(m, 0.0) - int8_us.get(m, 0.0) for m in sorted(nodes)), 0.0)
