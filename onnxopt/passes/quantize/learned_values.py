"""The values quantization-aware fine-tuning learned (``quantize:qat=auto``), carried onto other copies of the graph.

QAT trains one trial of the quantize pass -- the model with every node the speed search left int8 -- and
changes initializer values only: int8 weight levels, scales, int32 biases (:mod:`onnxopt.distill.qat`). The
budget's later trials keep more nodes float, and the pass writes the model once more at the end; each is a
fresh insertion of the same Q/DQ pairs. :class:`LearnedValues` puts the trained values into such a copy where
the tensor is the one QAT trained: the same name, the same *owner* (:func:`owner`: the activation a
quantizer's scale belongs to, or the nodes and inputs a dequantized constant feeds -- names alone shift when
an earlier reader of a shared constant is kept float, and its copies start from equal values) and the value
QAT started from. Where a layer's input scale was not carried over (its input is quantized differently in
that copy), its int32 bias is requantized at the scales the copy holds (:func:`realign_biases`), as
onnxruntime's integer kernels read the bias at ``s_x * s_w`` whatever the bias's own scale says.

A plan records the values as the pass wrote them (:meth:`LearnedValues.to_plan`): int8 levels as their
difference from the levels the insertion gives before training (two bits a weight, as GPTQ's,
:func:`~onnxopt.passes.quantize.planned_calibration.encode_levels`), scales and int32 biases as they are.
A replay rebuilds the same insertion (the plan's graph digest ties them) and overwrites the same tensors, so
the bytes are the planning run's without training.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.passes.quantize import policy
from onnxopt.passes.quantize.planned_calibration import decode_levels, encode_levels


@dataclasses.dataclass
class LearnedValues:
    """Trained initializer values by name, each with the value training started from and its owner (None: the
    same graph, as a plan's replay has it)."""

    after: dict[str, np.ndarray]
    before: dict[str, np.ndarray | None]
    owners: dict[str, Owner] = dataclasses.field(default_factory=dict)

    @classmethod
    def trained(cls, model: ir.Model, changed: dict[str, np.ndarray]) -> LearnedValues:
        """What QAT ``changed`` in ``model`` (the trial it trained), with ``model``'s values and owners as the
        start."""
        start = {name: _value(model.graph, name) for name in changed}
        return cls(dict(changed), start, {name: owner(model.graph, name) for name in changed})

    def apply(self, graph: ir.Graph) -> list[str]:
        """Overwrite the initializers that are the ones trained (same dtype, shape, owner and start value), then
        requantize the int32 biases whose layer's scales no longer multiply to their own; the names written."""
        written: list[str] = []
        for name, array in sorted(self.after.items()):
            current = _value(graph, name)
            start = self.before.get(name)
            if current is None or current.dtype != array.dtype or current.shape != array.shape:
                continue
            if start is not None and not np.array_equal(current, start):
                continue  # another tensor under the trained one's name
            if name in self.owners and owner(graph, name) != self.owners[name]:
                continue  # a copy of the same constant for another reader
            graph.initializers[name].const_value = ir.tensor(array, name=name)
            written.append(name)
        if written:
            realign_biases(graph)
        return written

    def subset(self, names: list[str]) -> LearnedValues:
        """Only ``names`` (those a copy took), for the plan."""
        return LearnedValues({k: self.after[k] for k in names}, {k: self.before.get(k) for k in names})

    def to_plan(self) -> dict[str, Any]:
        """JSON values: int8 levels against the start, everything else raw (little-endian, base64)."""
        out: dict[str, Any] = {}
        for name, array in sorted(self.after.items()):
            start = self.before.get(name)
            if array.dtype == np.int8 and start is not None and start.shape == array.shape:
                out[name] = {"levels": encode_levels(array, start)}
            else:
                raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                out[name] = {"dtype": array.dtype.str.lstrip("<>|="), "shape": list(array.shape),
                             "data": base64.b64encode(raw.tobytes()).decode("ascii")}  # fmt: skip
        return out

    @classmethod
    def of_plan(cls, entry: dict[str, Any], graph: ir.Graph) -> LearnedValues:
        """The values a plan recorded, read against ``graph`` (the replay's fresh insertion, before training);
        ValueError when they do not fit it."""
        after: dict[str, np.ndarray] = {}
        for name, item in entry.items():
            if "levels" in item:
                start = _value(graph, name)
                if start is None or start.dtype != np.int8:
                    raise ValueError(f"the plan's trained levels of {name!r} have no int8 tensor to apply to")
                after[name] = decode_levels(str(item["levels"]), start)
            else:
                dtype = np.dtype(str(item["dtype"])).newbyteorder("<")
                data = np.frombuffer(base64.b64decode(item["data"], validate=True), dtype)
                after[name] = data.reshape([int(d) for d in item["shape"]]).astype(dtype.newbyteorder("="))
        return cls(after, dict.fromkeys(after))


#: Who a quantization constant belongs to: ("q", activation) for a quantizer's scale or zero point, else
#: ("dq", ((reader, input index), ...), operand) for a DequantizeLinear's constant (weights, biases, constants).
Owner = tuple[Any, ...]


def owner(graph: ir.Graph, name: str) -> Owner:
    """``name``'s owner in ``graph`` (see :data:`Owner`); ("", name) for an initializer no Q/DQ reads."""
    value = graph.initializers.get(name)
    uses = list(value.uses()) if value is not None else []
    for use in uses:
        node = use.node
        if node.op_type == "QuantizeLinear" and node.inputs and node.inputs[0] is not None:
            return ("q", node.inputs[0].name, use.idx)
    for use in uses:
        node = use.node
        if node.op_type == "DequantizeLinear":
            readers = tuple(sorted((u.node.name or "", u.idx) for u in node.outputs[0].uses()))
            return ("dq", readers, use.idx)
    return ("", name)


def realign_biases(graph: ir.Graph) -> int:
    """Requantize each int32 bias (a DequantizeLinear of int32 read by a Conv/Gemm whose input and weight are
    dequantized constants' products) whose scale is not its layer's ``s_x * s_w``: same float value, the
    scale onnxruntime's integer kernel reads it at. Returns how many."""
    changed = 0
    for node in graph:
        at = policy.bias_index(node)
        if at is None or len(node.inputs) <= at or len(node.inputs) < 2:
            continue
        x_dq, w_dq, b_dq = (_dequantizer(node.inputs[i]) for i in (0, 1, at))
        if x_dq is None or w_dq is None or b_dq is None:
            continue
        b_q, b_scale = _value_of(b_dq.inputs[0]), _value_of(b_dq.inputs[1])
        s_x, s_w = _value_of(x_dq.inputs[1]), _value_of(w_dq.inputs[1])
        if b_q is None or b_scale is None or s_x is None or s_w is None or b_q.dtype != np.int32 or s_x.size != 1:
            continue
        expected = (float(s_x) * s_w.astype(np.float64)).astype(np.float32).reshape(b_scale.shape)
        if np.allclose(expected, b_scale, rtol=1e-6, atol=0):
            continue
        levels = np.round(b_q.astype(np.float64) * b_scale / np.where(expected > 0, expected, 1.0))
        if not np.isfinite(levels).all() or np.abs(levels).max(initial=0) > np.iinfo(np.int32).max:
            continue
        for operand, array in ((b_dq.inputs[0], levels.astype(np.int32)), (b_dq.inputs[1], expected)):
            assert operand is not None and operand.name is not None
            graph.initializers[operand.name].const_value = ir.tensor(array, name=operand.name)
        changed += 1
    return changed


def _dequantizer(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == "DequantizeLinear" and len(node.inputs) >= 2 else None


def _value_of(value: ir.Value | None) -> np.ndarray | None:
    return value.const_value.numpy() if value is not None and value.const_value is not None else None


def _value(graph: ir.Graph, name: str) -> np.ndarray | None:
    value = graph.initializers.get(name)
    return value.const_value.numpy() if value is not None and value.const_value is not None else None
