"""The quantize pass's rewrite: Q/DQ pairs on activations, int8 weights, int32 biases, quantized constants.

:class:`InsertQDQ` applies one decision (which nodes keep float compute, which of those keep exact weights)
to a model, with the ranges and learned levels of one :class:`~onnxopt.passes.quantize.calibration.Calibration`;
the pass runs it on the model it writes and on every trial copy its searches measure. Which inputs of an op
are activations, weights or biases is the policy's (:mod:`onnxopt.passes.quantize.policy`); the math is the
pass's docstring's (:mod:`onnxopt.passes.quantize.quantize_qdq`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import (
    NameSource,
    add_initializer,
    attribute,
    bypass_node,
    constant_array,
    drop_unused_initializers,
    remove_node_and_orphans,
    subgraph_reads,
)
from onnxopt.passes.base import PassLog
from onnxopt.passes.quantize import policy
from onnxopt.passes.quantize.activation_ranges import Ranges
from onnxopt.passes.quantize.calibration import Calibration
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.cpu_target import IntegerTarget
from onnxopt.passes.quantize.expand_activations import expand_hard_activations
from onnxopt.passes.quantize.weight_rounding import (
    apply_shift,
    quantize_weight,
    quantize_weight_per_tensor,
    rounding_shift,
)
from onnxopt.passes.quantize.weight_storage import MIN_ELEMENTS, store_weights_int8

_FLOAT = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
ZERO_DTYPE = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16}


class InsertQDQ:
    """One run's rewrite: ``apply`` quantizes a model in place with the given nodes kept float."""

    def __init__(self, config: QuantizeConfig, calibration: Calibration, target: IntegerTarget) -> None:
        self.config = config
        self.calibration = calibration
        self.target = target

    @property
    def weight_max(self) -> int:
        """The target's weight range for int8 kernels; 8 bits with int16 activations, which onnxruntime runs
        through float kernels (no u8*s8 pair sums to saturate, so 7 bits would only add error)."""
        return 127 if self.config.activations == "int16" else self.target.weight_max

    def apply(self, log: PassLog, model: ir.Model, excluded: set[str], *, exact: set[str]) -> None:
        """Quantize ``model`` in place with ``excluded`` kept float; every float weight left (nodes kept float,
        ops without integer kernels) is stored int8 unless its node is in ``exact`` or ``float_weights=float``."""
        graph, config, ranges = model.graph, self.config, self.calibration.ranges
        nodes = chosen(graph, excluded)
        names = NameSource(model)
        if self.calibration.means:
            weight_max = 127 if config.weights_only else self.weight_max  # storage rounds to 8 bits
            self._correct_biases(log, nodes, weight_max, names)
        if not config.weights_only:
            float_tensors = touching(graph, excluded)
            folded = set()
            clamped: dict[int, str] = {}  # an activation folded into the quantizer -> the tensor that clamps
            if config.activations == "uint8":
                nodes, ranges = expand_hard_activations(log, graph, nodes, ranges, names)
                clamped = {id(n): n.outputs[0].name or "" for n in nodes if policy.clamp_bounds(n) is not None}
                folded = fold_activations(log, graph, nodes, ranges, float_tensors)
            nodes = [n for n in nodes if id(n) not in folded]
            float_tensors = touching(graph, excluded)  # again: folding renamed and rewired the tensors
            tail = output_tail(nodes, ranges)
            if tail:
                log.count("tensors only graph outputs read left float after a Concat of mixed ranges", len(tail))
            float_tensors |= tail
            tensors = activation_tensors(graph, nodes, float_tensors)
            clamping = {clamped[i] for i in folded if i in clamped}
            trips = round_trips([v for v in tensors if v.name not in clamping], nodes, float_tensors)
            if trips:
                log.count("tensors left float between float-running nodes", len(trips))
                tensors = [v for v in tensors if id(v) not in trips]
            ranges = shared_input_ranges(nodes, ranges, {id(v) for v in tensors})
            for value in tensors:
                low, high = ranges.get(value.name or "", (np.inf, -np.inf))
                if not (np.isfinite(low) and np.isfinite(high)):
                    log.skip(value.name or "?", "no finite calibration range")
                    continue
                insert_pair(log, graph, value, activation_params(low, high, config.activations), names, config)
            absorbed = absorb_scalar_products(log, graph, nodes, names)
            nodes = [n for n in nodes if id(n) not in absorbed]
        for node in [] if config.weights_only else nodes:
            if policy.has_weight(node) and not _runs_float(node):
                self._quantize_weight(log, graph, node, names)
            elif policy.quantizes_constants(node):
                quantize_constants(graph, node, names, config.activations)
        if config.float_weights == "int8" or config.weights_only:
            everything = 1 if config.weights_only else MIN_ELEMENTS  # asked for: every weight, however small
            learned = self.calibration.learned
            stored = store_weights_int8(
                graph, names, exact, min_elements=everything, rounder=lambda n, w, axis: learned(n, w, 127)
            )
            if stored:
                log.count("weights stored int8 for float compute", len(stored))

    def _correct_biases(self, log: PassLog, nodes: list[ir.Node], weight_max: int, names: NameSource) -> None:
        """Before rounding: each Conv/Gemm bias absorbs the mean output error its weight's rounding will cause."""
        means = self.calibration.means
        for node in nodes:
            x = node.inputs[0] if node.inputs else None
            if not policy.bias_corrected(node) or x is None or x.name not in means:
                continue
            gemm_scaled = attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
            if node.op_type == "Gemm" and (gemm_scaled or attribute(node, "beta", 1.0) != 1.0):
                continue
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            if weight is None or len(weight.uses()) != 1:
                continue
            weight_array = constant_array(weight)
            rounded = self.calibration.learned(node, weight_array, weight_max) if weight_array is not None else None
            shift = rounding_shift(node, means[x.name], weight_max, rounded)
            if shift is not None and apply_shift(node, shift, names):
                log.count("biases corrected for weight rounding")

    def _quantize_weight(self, log: PassLog, graph: ir.Graph, node: ir.Node, names: NameSource) -> None:
        weight_max = self.weight_max
        weight_value = node.inputs[1] if len(node.inputs) > 1 else None
        weight = constant_array(weight_value)
        where = node.name or node.op_type
        if weight is None or weight.dtype.kind != "f" or weight.ndim < 2 or weight_value is None:
            log.skip(where, "its weight is not a float constant matrix or kernel")
            return
        if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0):
            log.skip(where, "Gemm with transA or alpha != 1 stays float")
            return
        axis, _ = policy.weight_axes(node, weight.ndim)
        if self.config.per_channel:
            learned = self.calibration.learned(node, weight, weight_max)
            w_q, w_scale = learned or quantize_weight(weight, axis, weight_max)
        else:  # one scale: the DequantizeLinear takes no axis, the bias one scale s_x * s_w
            (w_q, w_scale), axis = quantize_weight_per_tensor(weight, weight_max), None
        base = weight_value.name or f"{where}_weight"
        dq = dequantize(graph, names, base, w_q, w_scale, np.zeros_like(w_scale, dtype=np.int8), axis)
        node.replace_input_with(1, dq)
        drop_unused_initializers(graph, [weight_value])
        log.count("weights quantized")
        x = node.inputs[0]
        at = policy.bias_index(node)
        bias_value = node.inputs[at] if at is not None and len(node.inputs) > at else None
        bias = constant_array(bias_value) if bias_value is not None else None
        x_params = input_params(x)
        if bias is None or bias_value is None or x_params is None or bias.ndim != 1:
            return
        if w_scale.size != bias.size and w_scale.ndim:
            return
        b_scale = (x_params[0] * w_scale.astype(np.float64)).astype(np.float32)
        levels = np.round(bias.astype(np.float64) / np.where(b_scale > 0, b_scale, 1.0))
        if not np.isfinite(levels).all() or np.abs(levels).max(initial=0) > np.iinfo(np.int32).max:
            # a bias that int32 cannot hold at scale s_x * s_w (a near-constant input): kept float, so
            # onnxruntime runs this node in float rather than with a wrapped-around bias
            log.skip(where, "its bias overflows int32 at the input's scale: bias kept float")
            return
        b_q = levels.astype(np.int32)
        zeros = np.zeros(b_scale.shape, np.int32)
        bias_name = bias_value.name or f"{where}_bias"
        bias_axis = 0 if b_scale.ndim else None
        node.replace_input_with(at, dequantize(graph, names, bias_name, b_q, b_scale, zeros, bias_axis))  # type: ignore[arg-type]
        drop_unused_initializers(graph, [bias_value])
        log.count("biases quantized")


# ------------------------------------------------------------------ which nodes and tensors


def _runs_float(node: ir.Node) -> bool:
    """Whether onnxruntime will run ``node`` in float although it was chosen: an op it fuses only with a quantized
    output (a Conv) whose output got no QuantizeLinear (its readers stay float), or whose input got no
    DequantizeLinear (its producer stays float). A DequantizeLinear on its weight
    would then run at every inference; left float, the weight is stored int8 the float-compute way (a Cast and
    a Mul onnxruntime folds when the session is created)."""
    if not policy.fused_output(node):
        return False
    unquantized_input = bool(node.inputs) and input_params(node.inputs[0]) is None
    return unquantized_input or not any(u.node.op_type == "QuantizeLinear" for u in node.outputs[0].uses())


def chosen(graph: ir.Graph, excluded: set[str]) -> list[ir.Node]:
    """The nodes the pass quantizes: the policy's quantized ops, less ``excluded``."""
    return [n for n in graph if policy.quantizable(n) and n.name not in excluded]


def activation_tensors(graph: ir.Graph, nodes: list[ir.Node], keep_float: set[int] = frozenset()) -> list[ir.Value]:
    """The float tensors ``nodes`` read as activations or write (first output): each gets one Q/DQ pair.

    ``keep_float`` (by id), tensors subgraphs read and initializers stay float. A graph output stays float
    unless one of ``nodes`` writes it and runs as an integer kernel only with a quantized output (a Conv, an
    Add, ...): then the pair lets onnxruntime fuse that last node too, and its DequantizeLinear is the model's
    last step, as in onnxruntime's own quantizer. A Gemm or MatMul output is quantized only for a reader in
    ``nodes``: their integer kernels write float (QGemm, MatMulIntegerToFloat)."""
    graph_outputs = {id(v) for v in graph.outputs}
    keep = set(keep_float) | subgraph_reads(graph)  # those stay float
    seen: dict[int, ir.Value] = {}
    for node in nodes:
        outputs = [] if policy.float_output(node) else node.outputs if policy.runs_on_int8(node) else node.outputs[:1]
        for value in [*policy.activation_inputs(node), *outputs]:
            if value is None or id(value) in keep or value.is_initializer() or value.dtype not in _FLOAT:
                continue
            if id(value) in graph_outputs and not (value.producer() is node and policy.fused_output(node)):
                continue
            if value.producer() is not None and value.producer().op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            seen.setdefault(id(value), value)
    return list(seen.values())


#: A Concat that only feeds graph outputs writes float when its inputs' ranges are more than this factor apart (a
#: third of a bit): no integer kernel reads it there, so one shared scale buys no speed and only coarsens the
#: narrower inputs. The glyph detector's head joins box offsets and [0, 1] scores 1.8x apart, then its three scales
#: 2.3x apart: its scores reached the output at a step 4x their own.
OUTPUT_TAIL_RANGE_RATIO = 1.25


def join_range_ratio(node: ir.Node, ranges: Ranges) -> float | None:
    """How many times wider the widest input of the Concat ``node`` is than its narrowest (spans including 0, from
    calibration or the constant's values); None with fewer than two known."""
    spans = []
    for value in node.inputs:
        array = constant_array(value)
        low, high = (
            (float(array.min()), float(array.max())) if array is not None and array.size
            else ranges.get(value.name or "", (np.inf, -np.inf)) if value is not None else (np.inf, -np.inf)
        )  # fmt: skip
        if np.isfinite(low) and np.isfinite(high):
            spans.append(max(high, 0.0) - min(low, 0.0))
    return max(spans) / max(min(spans), 1e-12) if len(spans) >= 2 else None


def carried_from(node: ir.Node) -> list[ir.Node]:
    """``node`` and every data-movement node downstream of it (followed until a node that computes)."""
    found, frontier, seen = [], [node], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        frontier.extend(use.node for value in current.outputs for use in value.uses() if policy.carries(use.node))
    return found


def reaches_only_outputs(node: ir.Node) -> bool:
    """Whether everything ``node`` writes reaches only graph outputs, through data-movement nodes alone."""
    for current in carried_from(node):
        for value in current.outputs:
            uses = list(value.uses())
            if (not uses and not value.is_graph_output()) or not all(policy.carries(u.node) for u in uses):
                return False
    return True


def output_tail(nodes: list[ir.Node], ranges: Ranges) -> set[int]:
    """The tensors (by id) written by each of ``nodes``' Concats that only feed graph outputs and join inputs more
    than :data:`OUTPUT_TAIL_RANGE_RATIO` apart, and by the data movement after them: left float. The Concat's
    inputs keep their pairs, so their writers stay integer kernels and each input is dequantized at its own
    scale; onnxruntime runs the Concat and what follows in float, on the few values a head writes."""
    tail: set[int] = set()
    for node in nodes:
        if node.op_type != "Concat" or any(id(v) in tail for v in node.outputs) or not reaches_only_outputs(node):
            continue
        ratio = join_range_ratio(node, ranges)
        if ratio is not None and ratio > OUTPUT_TAIL_RANGE_RATIO:
            tail |= {id(value) for current in carried_from(node) for value in current.outputs}
    return tail


def round_trips(tensors: list[ir.Value], nodes: list[ir.Node], float_tensors: set[int]) -> set[int]:
    """The ``tensors`` (by id) whose producer and every reader run float anyway: not among ``nodes`` (the
    quantized ones), or reading or writing a tensor kept float (``float_tensors``, :func:`touching`). A Q/DQ
    pair there feeds no integer kernel: onnxruntime runs it as a standalone QuantizeLinear and DequantizeLinear
    (with a layout reorder beside each), and it only rounds. A node kept float runs its neighbours float, so the
    tensors between two such neighbours are these; leaving them float changes no node's kernel. Only activations
    count (a shared constant spreads nothing), and a Gemm or MatMul's float output does not make it float (its
    integer kernel writes float). For the same reason such a producer does not need the pair on its output: a
    Gemm whose logits only a Reshape carries to the graph's output keeps QGemm without it, and the pair would round
    the logits to 8 bits and run one more DequantizeLinear (1.7 dB of the OCR recognizer's output SNR with int8
    compute everywhere). A graph output that no fused integer kernel writes stays float
    (:func:`activation_tensors`), so a data-movement op writing one (the Reshape there) runs float. The caller
    leaves out a tensor whose pair clamps in place of a folded Relu or Clip (:func:`fold_activations`): there
    the pair is the activation."""
    quantized = {id(n) for n in nodes}

    def stays_float(value: ir.Value) -> bool:
        if id(value) in float_tensors:
            return True
        writer = value.producer()
        fused = writer is not None and id(writer) in quantized and policy.fused_output(writer)
        return value.is_graph_output() and not fused

    def runs_float(node: ir.Node) -> bool:
        if id(node) not in quantized:
            return True
        outputs = [] if policy.float_output(node) else node.outputs  # QGemm, MatMulIntegerToFloat: int8 in, float out
        activations = (v for v in (*policy.activation_inputs(node), *outputs) if v is not None)
        return any(stays_float(v) for v in activations if not v.is_initializer() and v.const_value is None)

    def writes_float(node: ir.Node | None) -> bool:  # the pair on its output feeds no integer kernel of its own
        return node is None or runs_float(node) or policy.float_output(node)

    found = set()
    for value in tensors:
        producer, readers = value.producer(), [use.node for use in value.uses()]
        if producer is None and not readers:
            continue
        if writes_float(producer) and all(runs_float(reader) for reader in readers):
            found.add(id(value))
    return found


def touching(graph: ir.Graph, excluded: set[str]) -> set[int]:
    """The tensors read or written by nodes kept float: they stay float, so onnxruntime cannot fuse those nodes
    back into integer kernels (a Q/DQ pair on either side would let it); readers of them run float too."""
    return {id(v) for n in graph if n.name in excluded for v in (*n.inputs, *n.outputs) if v is not None}


# ------------------------------------------------------------------ rewriting


def fold_activations(
    log: PassLog, graph: ir.Graph, nodes: list[ir.Node], ranges: Ranges, float_tensors: set[int]
) -> set[int]:
    """Remove each Relu, or Clip with constant bounds ``low <= 0 <= high`` (ReLU6), that alone reads the output of
    a node onnxruntime fuses into an integer kernel; that output takes the activation's name, so its calibrated
    range, and the quantizer's clamp does the activation's work.

    Exact, for uint8 activations: the range is the activation's output range, ``[min(r_lo, 0), max(r_hi, 0)]``
    with ``low <= r_lo`` and ``r_hi <= high``, so the quantizer's clamp lies within the activation's. Without
    it, onnxruntime requantizes -- ``QLinearConv -> DequantizeLinear -> Clip -> QuantizeLinear -> QLinearConv``
    -- a ReLU6 MobileNet's every block. Returns the removed nodes (by id)."""
    folded = set()
    chosen_ids = {id(n) for n in nodes}
    for node in nodes:
        if not policy.fused_output(node):
            continue
        out = node.outputs[0]
        uses = list(out.uses())
        if out.is_graph_output() or len(uses) != 1:
            continue
        activation = uses[0].node
        bounds = policy.clamp_bounds(activation)
        if bounds is None or not bounds[0] <= 0.0 <= bounds[1] or uses[0].idx != 0:
            continue
        result = activation.outputs[0]
        low, high = ranges.get(result.name or "", (np.inf, -np.inf))
        if id(activation) not in chosen_ids or not (np.isfinite(low) and np.isfinite(high)):
            continue  # no quantizer would be placed to clamp in the activation's place
        if id(result) in subgraph_reads(graph):  # read inside a subgraph: it stays float, unclamped
            continue
        if id(result) in float_tensors:  # stays float: nothing would clamp it in the activation's place
            continue
        bypass_node(graph, activation, out, result, x_now_equals_y=True)
        folded.add(id(activation))
        log.count(f"{activation.op_type} folded into the quantizer")
    return folded


def shared_input_ranges(nodes: list[ir.Node], ranges: Ranges, quantized: set[int]) -> Ranges:
    """``ranges`` with the output of every op onnxruntime runs directly on int8 (MaxPool, Resize, Slice, Reshape,
    Transpose, ...: :data:`~onnxopt.passes.quantize.policy.ON_INT8`) given its input's range, so both get the same
    scale and zero point.

    onnxruntime drops ``DequantizeLinear -> op -> QuantizeLinear`` only when the two share them; calibrated on
    their own they differ wherever the op changes the extremes (a MaxPool raises the minimum of a SiLU's
    output), and the op then runs in float between a DequantizeLinear and a QuantizeLinear. Exact for data
    movement and MaxPool (the output's values are some of the input's); a Resize's interpolation stays within
    its input's range. ``quantized`` (by id) are the tensors that get a pair: both ends must. Graph order, so a
    chain of such ops shares its first input's range."""
    shared = dict(ranges)
    for node in nodes:
        if not policy.runs_on_int8(node) or not node.inputs or node.inputs[0] is None:
            continue
        x = node.inputs[0]
        for y in node.outputs:  # a Split's every part
            if id(x) in quantized and id(y) in quantized and x.name in shared:
                shared[y.name or ""] = shared[x.name or ""]
    return shared


def absorb_scalar_products(log: PassLog, graph: ir.Graph, nodes: list[ir.Node], names: NameSource) -> set[int]:
    """Remove each Mul of a quantized tensor by a positive scalar constant ``c``, folding ``c`` into the quantizer
    before it: ``Q(x, s1) -> DQ -> Mul(c) -> Q(y, s2)`` becomes ``Q(x, s2 / c, z2)``, whose integers read as
    ``y = c * x`` at ``(s2, z2)`` by the DequantizeLinear that follows.

    The same integers as the QLinearMul it replaces, less one rounding (``x`` is no longer rounded at ``s1``
    first), and one elementwise kernel fewer: a HardSwish written as ``x * Clip(x + 3, 0, 6) / 6`` ran two
    QLinearMul where one is now left. Only where the quantizer of ``x`` feeds nothing else and the Mul's output
    only its own quantizer. Returns the removed Mul nodes (by id)."""
    removed: set[int] = set()
    for node in nodes:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        constants = [constant_array(v) for v in node.inputs]
        at = next((i for i, c in enumerate(constants) if c is not None and c.size == 1), None)
        if at is None or not (float(constants[at].reshape(-1)[0]) > 0):  # type: ignore[union-attr]
            continue
        c = float(constants[at].reshape(-1)[0])  # type: ignore[union-attr]
        x = node.inputs[1 - at]
        if constants[at].ndim != 0 and (x is None or x.shape is None or node.outputs[0].shape != x.shape):  # type: ignore[union-attr]
            continue  # a [1, 1, 1, 1] constant may broadcast x to a higher rank: the Mul is not a pure scaling
        dq = x.producer() if x is not None else None
        q1 = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" and dq.inputs[0] else None
        out_uses = list(node.outputs[0].uses())
        q2 = out_uses[0].node if len(out_uses) == 1 else None
        if (
            q1 is None or q1.op_type != "QuantizeLinear" or q2 is None or q2.op_type != "QuantizeLinear"
            or len(q1.outputs[0].uses()) != 1 or len(dq.outputs[0].uses()) != 1  # type: ignore[union-attr]
            or node.outputs[0].is_graph_output() or len(q2.inputs) < 3
        ):  # fmt: skip
            continue
        s2 = constant_array(q2.inputs[1])
        if s2 is None or s2.size != 1:
            continue
        scale = add_initializer(
            graph, names.fresh(f"{node.name or 'mul'}_absorbed_scale"), np.asarray(s2 / c, np.float32)
        )
        q1.replace_input_with(1, scale)
        q1.replace_input_with(2, q2.inputs[2])
        ir.convenience.replace_all_uses_with(q2.outputs[0], q1.outputs[0])
        for gone in (q2, node, dq):
            remove_node_and_orphans(graph, gone)
        removed.add(id(node))
        log.count("Mul by a scalar folded into a quantizer")
    return removed


def insert_pair(
    log: PassLog,
    graph: ir.Graph,
    value: ir.Value,
    params: tuple[float, int],
    names: NameSource,
    config: QuantizeConfig,
) -> None:
    """One QuantizeLinear -> DequantizeLinear pair after ``value`` at (scale, zero point), read by all its readers."""
    scale, zero = params
    readers = [(u.node, u.idx) for u in value.uses()]  # before the Q node becomes a reader too
    base = value.name or "t"
    output_at = [i for i, v in enumerate(graph.outputs) if v is value]
    s = add_initializer(graph, names.fresh(f"{base}_scale"), np.array(scale, np.float32))
    z = add_initializer(graph, names.fresh(f"{base}_zero_point"), np.array(zero, ZERO_DTYPE[config.activations]))
    q = ir.node("QuantizeLinear", [value, s, z], name=names.fresh(f"{base}_Q"))
    q.outputs[0].name = names.fresh(f"{base}_quantized")
    dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=names.fresh(f"{base}_DQ"))
    dq.outputs[0].name = names.fresh(f"{base}_dequantized")
    dq.outputs[0].dtype, dq.outputs[0].shape = value.dtype, value.shape
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, [q, dq])
    else:
        graph.insert_before(next(iter(graph)), [q, dq])
    for reader, index in readers:  # a Shape or Size reads only the shape: the quantized tensor has it, no DQ
        shape_only = reader.op_type in ("Shape", "Size") and reader.domain in ("", "ai.onnx")
        reader.replace_input_with(index, q.outputs[0] if shape_only else dq.outputs[0])
    if output_at:  # the model's output is now the dequantized value, under its own name
        name = value.name
        value.name = names.fresh(f"{base}_float")
        dq.outputs[0].name = name
        for i in output_at:
            graph.outputs[i] = dq.outputs[0]
    log.count("tensors quantized")


def input_params(x: ir.Value | None) -> tuple[float, int] | None:
    """The scale of the quantized tensor a node reads (through its DequantizeLinear)."""
    producer = x.producer() if x is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    scale = constant_array(producer.inputs[1])
    return (float(scale), 0) if scale is not None and scale.size == 1 else None


def quantize_constants(graph: ir.Graph, node: ir.Node, names: NameSource, kind: str) -> None:
    """Every float constant ``node`` reads, quantized per tensor like an activation of ``kind``."""
    for index, value in enumerate(node.inputs):
        array = constant_array(value)
        if array is None or array.dtype.kind != "f" or value is None:
            continue
        low, high = float(min(array.min(), 0.0)), float(max(array.max(), 0.0))
        scale, zero = activation_params(low, high, kind)
        dtype = ZERO_DTYPE[kind]
        info = np.iinfo(dtype)
        q = np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
        base = value.name or f"{node.name}_const{index}"
        dq = dequantize(graph, names, base, q, np.float32(scale), dtype(zero), None)
        node.replace_input_with(index, dq)
        drop_unused_initializers(graph, [value])


def dequantize(graph, names, base, q, scale, zero, axis) -> ir.Value:
    """A DequantizeLinear of the constant ``q`` at ``scale``/``zero`` (along ``axis``), placed first in ``graph``."""
    q_value = add_initializer(graph, names.fresh(f"{base}_quantized"), q)
    s_value = add_initializer(graph, names.fresh(f"{base}_scale"), np.asarray(scale, np.float32))
    z_value = add_initializer(graph, names.fresh(f"{base}_zero_point"), np.asarray(zero))
    attrs = {} if axis is None else {"axis": axis}
    dq = ir.node("DequantizeLinear", [q_value, s_value, z_value], attributes=attrs, name=names.fresh(f"{base}_DQ"))
    dq.outputs[0].name = names.fresh(f"{base}_dequantized")
    graph.insert_before(next(iter(graph)), dq)
    return dq.outputs[0]


def activation_params(low: float, high: float, kind: str) -> tuple[float, int]:
    """(scale, zero point) of a tensor in [low, high] as ``kind`` (uint8 asymmetric, int8/int16 symmetric)."""
    low, high = min(low, 0.0), max(high, 0.0)  # zero must be exactly representable
    if kind in ("int8", "int16"):
        peak = max(abs(low), abs(high))
        top = 127.0 if kind == "int8" else 32767.0
        return (peak / top if peak > 0 else 1.0), 0
    span = high - low
    if span <= 0:
        return 1.0, 0
    scale = span / 255.0
    return scale, int(np.clip(np.round(-low / scale), 0, 255))
