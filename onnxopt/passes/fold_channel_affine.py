"""Per-channel Mul/Add/Sub/Div by constants folded into the preceding linear op.

What converters emit for Keras BN (and what ``fold-bn`` step 3 leaves) is
``Conv -> Mul(c) -> Add(d)``; this pass folds each such node into the
weights and bias of its producer:

* ``Mul(x, c)`` / ``Div(x, c)``: ``s = c`` / ``1/c``, ``t = 0``.
* ``Add(x, c)`` / ``Sub(x, c)``: ``s = 1``, ``t = c`` / ``-c``.

Matches when ``x`` comes from Conv, ConvTranspose, Gemm, MatMul (constant
2-D weight), or such an op plus a per-channel bias Add; ``c`` is a float
constant varying only along the producer's output-channel axis (axis 1 for
Conv/Gemm, the last axis for MatMul) and not widening the output's rank;
``x`` has no other consumer. The algebra is in
:mod:`onnxopt.passes._channel_affine`.

Declined with a reason: non-constant or non-per-channel operands,
``c - x`` / ``c / x`` (not affine in x's channel sense), shared producer
outputs, and a Div by a constant containing zero.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._channel_affine import ChannelAffine, channel_axis_rank, fold_into_producer, per_channel
from onnxopt.passes._graph_edit import NameSource, bypass_node, constant_array
from onnxopt.passes.base import Decline, OptPass, PassLog

_OPS = ("Mul", "Div", "Add", "Sub")


class FoldChannelAffinePass(OptPass):
    """Fold per-channel Mul/Add/Sub/Div by constants into the preceding Conv/Gemm/MatMul."""

    name = "fold-affine"
    min_opset = 7  # the Mul/Add it reads or writes broadcast numpy-style only from opset 7 on

    def required_opset(self, model: ir.Model) -> int | None:
        """Opset 7 only when the model has a node this pass matches: an older model without one stays as it is."""
        return self.min_opset if any(n.op_type in {"Mul", "Add", "Sub", "Div"} for n in model.graph) else None

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        names = NameSource(model)
        for node in list(model.graph):
            if node.op_type not in _OPS or node.domain != "" or len(node.inputs) != 2:
                continue
            x, affine = self._operands(log, node)
            if x is None or affine is None:
                continue
            result = fold_into_producer(x, affine, names, new_bias=False)
            if isinstance(result, Decline):  # about the producer it judged; reported in this node's name
                log.skip(node.name or node.op_type, result.reason)
                continue
            bypass_node(model.graph, node, result, node.outputs[0], x_now_equals_y=True)
            log.count(f"{node.op_type} folded")

    def _operands(self, log: PassLog, node: ir.Node) -> tuple[ir.Value | None, ChannelAffine | None]:
        """The data input and the affine map, when ``node`` has that shape."""
        commutes = node.op_type in ("Mul", "Add")
        for data_index in (0, 1) if commutes else (0,):
            x, c_value = node.inputs[data_index], node.inputs[1 - data_index]
            c = constant_array(c_value)
            if x is None or c is None or c.dtype.kind != "f" or constant_array(x) is not None:
                continue
            producer = x.producer()
            layout = channel_axis_rank(_linear_behind(producer)) if producer is not None else None
            if layout is None:
                return None, None
            rank = len(x.shape) if x.shape is not None else layout[1]
            if not per_channel(c, axis=layout[0], rank=rank):
                log.skip(node.name or node.op_type, f"constant of shape {list(c.shape)} is not per-channel")
                return None, None
            vector = c.astype(np.float64).reshape(-1)
            if node.op_type == "Div" and np.any(vector == 0):
                log.skip(node.name or node.op_type, "divides by a constant containing zero")
                return None, None
            one, zero = np.ones(1), np.zeros(1)
            scale, shift = {
                "Mul": (vector, zero),
                "Div": (1.0 / vector, zero),
                "Add": (one, vector),
                "Sub": (one, -vector),
            }[node.op_type]
            return x, ChannelAffine(scale, shift, axis=layout[0], rank=rank)
        return None, None


def _linear_behind(node: ir.Node) -> ir.Node:
    """The linear op itself, looking through a bias Add that follows it."""
    if node.op_type == "Add" and node.domain == "":
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and channel_axis_rank(producer) is not None:
                return producer
    return node
