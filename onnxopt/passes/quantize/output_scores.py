"""Scores a model outputs keep their whole range: a Sigmoid's [0, 1] is not clamped at what calibration saw.

A detector's objectness and class scores (a Sigmoid, moved by Reshape/Transpose/Concat to the model's output)
are calibrated like any tensor: on data where a head's objects are rare, the largest score seen is small --
the glyph detector's third head never passed 0.012 on 16 rendered captchas -- and the quantizer then clamps
every later score there, however confident: an object of that size can no longer be found. Widened to the
function's own range, ``[0, 1]`` at ``1/255`` per level for uint8 -- and its input, the logit, up to where
the score reads 0.99 (a logit clamped at its calibrated maximum clamps the score all the same) -- a confident
score stays confident. Only for outputs: inside the network a gate's calibrated range is
what its readers see.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxopt.passes._graph_edit import attribute
from onnxopt.passes.quantize import policy
from onnxopt.passes.quantize.activation_ranges import Ranges

#: The ops with a bounded output range: (low, high).
BOUNDED = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


def widen_output_scores(graph: ir.Graph, ranges: Ranges) -> list[str]:
    """In place: each bounded op (Sigmoid, HardSigmoid, Tanh) whose output reaches a graph output through data
    movement only (:func:`~onnxopt.passes.quantize.policy.carries`: Concat, Reshape, Transpose, ...) gets its
    function's whole range, as do the tensors between it and the output. Returns the widened tensors' names."""
    widened: list[str] = []
    frontier = [v for v in graph.outputs]
    seen: set[int] = set()
    while frontier:
        value = frontier.pop()
        producer = value.producer()
        if id(value) in seen or producer is None or producer.domain not in ("", "ai.onnx"):
            continue
        seen.add(id(value))
        if producer.op_type in BOUNDED:
            low, high = BOUNDED[producer.op_type]
            _widen(ranges, value, low, high, widened)
            logit = producer.inputs[0] if producer.inputs else None
            if logit is not None and logit.name in ranges:  # the logit too: else it clamps first
                _widen(ranges, logit, *_saturating_inputs(producer, *ranges[logit.name]), widened)
        elif policy.carries(producer):
            data = producer.inputs if producer.op_type == "Concat" else producer.inputs[:1]
            frontier.extend(v for v in data if v is not None)
    # the data movement between a widened score and the output carries the widened range too
    for node in graph:
        if policy.carries(node) and any(v is not None and v.name in widened for v in node.inputs):
            out = node.outputs[0]
            if out.name in ranges:
                low, high = ranges[out.name]
                scores = [ranges[v.name] for v in node.inputs if v is not None and v.name in widened]
                _widen(ranges, out, min([low] + [s[0] for s in scores]), max([high] + [s[1] for s in scores]), widened)
    return widened


def _saturating_inputs(node: ir.Node, low: float, high: float) -> tuple[float, float]:
    """The logit range a confident output needs, from the calibrated ``(low, high)``: up to where a Sigmoid
    reads 0.99 (4.6), a HardSigmoid 1 (``(1 - beta) / alpha``), a Tanh -+0.99 (-+2.65). Only the high end for
    scores in [0, 1] -- a clamped low score is a score of about 0 either way, and a wider logit range costs
    every score precision."""
    if node.op_type == "HardSigmoid":
        alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
        return (low, max(high, (1.0 - beta) / alpha)) if alpha > 0 else (low, high)
    if node.op_type == "Tanh":
        return min(low, -2.65), max(high, 2.65)
    return low, max(high, 4.6)


def _widen(ranges: Ranges, value: ir.Value, low: float, high: float, widened: list[str]) -> None:
    name = value.name or ""
    if name not in ranges:
        return
    old_low, old_high = ranges[name]
    new = (min(old_low, low), max(old_high, high))
    if new != (old_low, old_high):
        ranges[name] = new
        widened.append(name)
