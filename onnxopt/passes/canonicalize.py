"""Graph clean-ups before quantization: rewrites to equivalent ops that onnxruntime runs faster in int8.

* :func:`sums_to_adds` -- a two-input ``Sum`` is ``Add``, which has an integer kernel (QLinearAdd); Sum has none.
* :func:`shuffles_to_gathers` -- a channel shuffle (Reshape [N,g,C/g,H,W], Transpose [0,2,1,3,4], Reshape
  [N,C,H,W]) is one ``Gather`` of the permuted channels along axis 1: the same values, copied as whole planes.

Both are exact (the same values, bit for bit) and keep the rewritten node's name and output. They are plain
functions the quantize pass calls first (:mod:`onnxopt.passes.quantize.quantize_qdq`), not a pass of their own:
in a float model neither is faster.
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
    remove_node_and_orphans,
)
from onnxopt.passes.base import PassLog


def canonicalize(log: PassLog, model: ir.Model) -> NameSource:
    """Every clean-up, in order, on ``model``'s main graph; returns the fresh-name source the rewrites drew from
    (the caller goes on naming with it)."""
    sums_to_adds(log, model.graph)
    names = NameSource(model)
    shuffles_to_gathers(log, model.graph, names)
    return names


def sums_to_adds(log: PassLog, graph: ir.Graph) -> None:
    """Two-input Sum is Add, which has an integer kernel (QLinearAdd); Sum has none."""
    for node in list(graph):
        if node.op_type == "Sum" and node.domain == "" and len(node.inputs) == 2:
            add = ir.node("Add", list(node.inputs), name=node.name)
            graph.insert_before(node, add)
            out, new = node.outputs[0], add.outputs[0]
            new.dtype, new.shape = out.dtype, out.shape
            bypass_node(graph, node, new, out, x_now_equals_y=True)
            log.count("Sum rewritten as Add")


def shuffles_to_gathers(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
    """A channel shuffle -- Reshape [N,g,C/g,H,W], Transpose [0,2,1,3,4], Reshape [N,C,H,W] -- becomes one
    Gather of the permuted channels: the same values, but onnxruntime's uint8 5-D Transpose is 15-40x
    slower than its float one (it made int8 ShuffleNet slower than float), while Gather copies whole planes."""
    for node in list(graph):
        transpose = node.inputs[0].producer() if node.op_type == "Reshape" and node.inputs[0] else None
        if transpose is None or transpose.op_type != "Transpose":
            continue
        first = transpose.inputs[0].producer() if transpose.inputs[0] is not None else None
        if first is None or first.op_type != "Reshape" or first.domain or transpose.domain or node.domain:
            continue
        x, out = first.inputs[0], node.outputs[0]
        split = constant_array(first.inputs[1]) if len(first.inputs) > 1 else None
        if (
            x is None or split is None or split.shape != (5,)
            or list(attribute(transpose, "perm", [])) != [0, 2, 1, 3, 4]
            or len(first.outputs[0].uses()) != 1 or len(transpose.outputs[0].uses()) != 1
            or x.shape is None or out.shape is None or len(x.shape) != 4 or len(out.shape) != 4
        ):  # fmt: skip
            continue
        dims = [x.shape[i] for i in range(1, 4)]
        if not all(isinstance(d, int) for d in dims) or dims != [out.shape[i] for i in range(1, 4)]:
            continue
        channels, groups, per_group = dims[0], int(split[1]), int(split[2])
        if groups * per_group != channels or groups < 1:
            continue
        order = np.arange(channels).reshape(groups, per_group).T.reshape(-1)
        index = add_initializer(graph, names.fresh(f"{out.name or 'shuffle'}_channel_order"), order.astype(np.int64))
        gather = ir.node("Gather", [x, index], attributes={"axis": 1}, name=node.name)
        graph.insert_before(node, gather)
        gather.outputs[0].dtype, gather.outputs[0].shape = out.dtype, out.shape
        bypass_node(graph, node, gather.outputs[0], out, x_now_equals_y=True)
        remove_node_and_orphans(graph, transpose)
        remove_node_and_orphans(graph, first)
        log.count("channel shuffles rewritten as Gather")
