"""Which weights a weight-editing pass (clipping, pruning) touches, and their axes.

A *layer* is a Conv, ConvTranspose, Gemm or MatMul whose weight (input 1) is
a float initializer: the weight ops of the quantize policy
(:mod:`onnxopt.passes.quantize.policy`, which holds each op's weight layout and axes).

Layers are selected by op type and by regular expressions on the node name
(``include``/``exclude``); a weight shared with a node outside the selection
is declined (editing it would change that node too).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import attribute
from onnxopt.passes.quantize import policy

#: The op types whose input 1 is a weight (the quantize policy's weight ops).
WEIGHT_OPS = policy.weight_ops()


@dataclass
class Layer:
    """One selected layer: its node, weight value and array, and the weight's axes."""

    node: ir.Node
    weight: ir.Value
    array: np.ndarray
    out_axis: int
    in_axis: int

    @property
    def label(self) -> str:
        return self.node.name or f"{self.node.op_type}({self.weight.name})"


def scaled_gemm(node: ir.Node) -> bool:
    """Whether a Gemm is more than ``X op(B) + C`` (``transA``, or ``alpha``/``beta`` other than 1): passes that
    treat it as a plain linear layer (refit, factoring) decline those."""
    return bool(
        attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0
    )


def weight_axes(node: ir.Node, ndim: int) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of ``node``'s weight, as non-negative axes (the policy's rule)."""
    return policy.weight_axes(node, ndim)


def ops_field(verb: str) -> Any:
    """The ``ops`` field of a config whose pass selects layers (:func:`select_layers`): op types, comma-separated."""
    return dataclasses.field(
        default=",".join(WEIGHT_OPS), metadata={"help": f"comma-separated op types whose weights are {verb}"}
    )


def include_field(verb: str) -> Any:
    """The ``include`` field of such a config: a regex on node names."""
    return dataclasses.field(
        default="", metadata={"help": f"regex on node names: only matching layers are {verb}; empty: every node"}
    )


def exclude_field() -> Any:
    """The ``exclude`` field of such a config: a regex on node names."""
    return dataclasses.field(
        default="", metadata={"help": "regex on node names: matching layers are left alone; empty: none"}
    )


def check_filters(ops: str, include: str, exclude: str) -> None:
    """Refuse op types that carry no editable weight and malformed name patterns (ValueError)."""
    unknown = {op.strip() for op in ops.split(",") if op.strip()} - set(WEIGHT_OPS)
    if unknown:
        raise ValueError(f"ops {sorted(unknown)} carry no weight this pass edits (choose from {', '.join(WEIGHT_OPS)})")
    for pattern in (include, exclude):
        check_pattern(pattern)


def check_pattern(pattern: str) -> None:
    """Refuse a malformed node-name regular expression (ValueError, which recipes report)."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"bad name pattern {pattern!r}: {e}") from None


def select_layers(
    model: ir.Model, ops: str, include: str, exclude: str, skip: Callable[[str, str], None]
) -> list[Layer]:
    """The layers of ``model``'s main graph matching the filters; ``skip(where, why)`` hears the declined ones."""
    check_filters(ops, include, exclude)
    wanted = {op.strip() for op in ops.split(",") if op.strip()}
    keep = re.compile(include) if include else None
    drop = re.compile(exclude) if exclude else None
    layers = []
    for node in model.graph:
        if node.op_type not in wanted or node.domain != "" or len(node.inputs) < 2:
            continue
        name = node.name or ""
        if (keep and not keep.search(name)) or (drop and drop.search(name)):
            continue
        weight = node.inputs[1]
        tensor = weight.const_value if weight is not None else None
        where = name or node.op_type
        if weight is None or tensor is None or not weight.is_initializer():
            skip(where, "the weight is not an initializer")
            continue
        array = tensor.numpy()
        if array.dtype.kind != "f" or array.ndim < 2:
            skip(where, f"the weight is {array.dtype} of rank {array.ndim}, not a float matrix or kernel")
            continue
        others = [u.node for u in weight.uses() if u.node is not node]
        if any(o.op_type not in wanted or (keep and not keep.search(o.name or "")) for o in others):
            skip(where, f"weight '{weight.name}' is shared with a node outside the selection")
            continue
        out_axis, in_axis = weight_axes(node, array.ndim)
        layers.append(Layer(node, weight, array, out_axis, in_axis))
    return layers


def replace_weight(layer: Layer, array: np.ndarray) -> None:
    """Give ``layer``'s weight initializer new values (same name, dtype and shape)."""
    layer.weight.const_value = ir.tensor(array.astype(layer.array.dtype, copy=False), name=layer.weight.name)
    layer.array = array
