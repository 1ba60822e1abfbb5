"""Batch-norm folding: every inference BatchNormalization leaves the graph.

Inference BN is a per-channel affine map on axis 1:
``y = (x - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, i.e.
``y = x * s + t`` with ``t = beta - mean * s``. Each BN (main graph) is,
in this order of preference:

1. **Folded backward** into the op producing ``x`` -- Conv, ConvTranspose,
   Gemm (transB 0/1, with or without C), MatMul with a constant 2-D weight
   when ``x`` is rank 2 (a new bias Add if there was none), or such an op
   followed by a constant per-channel bias Add. Requires ``x`` to have no
   other consumer and not be a graph output: otherwise the other readers
   would see scaled values.
2. **Folded forward** into the Convs consuming ``y`` when all consumers are
   Convs with zero padding, optionally through MaxPool nodes in between
   when every ``s > 0`` (``max(s x + t) = s max(x) + t`` only for positive s).
3. **Rewritten** as ``Mul(x, s) + t`` with constants shaped ``[C, 1, ..]``
   to broadcast on axis 1 (needs ``x``'s rank), which ``fold-affine`` or
   onnxruntime can fuse further -- or, with ``standalone=keep`` (what the
   built-in recipes use), left a BatchNormalization: onnxruntime's CPU
   provider runs it as one blocked 1x1 Conv, faster than the two
   elementwise ops (1.03x the original's latency at batch 1 on the digits
   CNN with Mul+Add).

The algebra of (1)-(2) is in :mod:`onnxopt.passes._channel_affine`; weights
shared with other nodes are cloned, fp16 is folded in float64 and cast back.

Declined with a reason: training-mode BN (``training_mode=1`` or extra
outputs, which onnxruntime computes with batch statistics), non-constant
statistics or parameters, non-float types, and rank-unknown inputs in step 3.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.passes._channel_affine import ChannelAffine, fold_into_consumer_convs, fold_into_producer
from onnxopt.passes._config import validate_literals
from onnxopt.passes._graph_edit import (
    NameSource,
    attribute,
    bypass_node,
    constant_array,
    copy_type,
)
from onnxopt.passes.base import Decline, OptPass, PassLog


@dataclasses.dataclass(frozen=True)
class FoldBatchNormConfig:
    # onnxruntime's CPU provider runs a kept BN as one blocked 1x1 Conv; the Mul+Add stays two elementwise
    # ops, 3 % slower on the digits CNN
    standalone: Literal["mul_add", "keep"] = dataclasses.field(
        default="mul_add", metadata={"help": "a BN with no layer to fold into: rewrite it as Mul+Add, or keep it"}
    )

    def __post_init__(self) -> None:
        validate_literals(self)


class FoldBatchNormPass(OptPass):
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul weights, or rewrite it as Mul+Add."""

    name = "fold-bn"
    Config = FoldBatchNormConfig
    min_opset = 7  # the Mul/Add it reads or writes broadcast numpy-style only from opset 7 on

    def required_opset(self, model: ir.Model) -> int | None:
        """Opset 7 only when the model has a node this pass matches: an older model without one stays as it is."""
        return self.min_opset if any(n.op_type in {"BatchNormalization"} for n in model.graph) else None

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        names = NameSource(model)
        for node in list(model.graph):
            if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
                continue
            affine = _inference_affine(node)
            if isinstance(affine, Decline):
                log.decline(affine)
                continue
            self._fold(log, model.graph, node, affine, names)

    def _fold(self, log: PassLog, graph: ir.Graph, bn: ir.Node, affine: ChannelAffine, names: NameSource) -> None:
        x, y = bn.inputs[0], bn.outputs[0]
        assert x is not None
        backward = fold_into_producer(x, affine, names)
        if isinstance(backward, ir.Value):
            producer = x.producer()
            bypass_node(graph, bn, backward, y, x_now_equals_y=True)
            log.count(f"folded into {producer.op_type if producer else 'producer'}")
            return
        forward = _fold_forward(graph, bn, affine, names)
        if forward is None:
            log.count("folded into following Conv")
            return
        # the BN is declined: what each direction said about the node it judged, in the BN's name
        where = _where(bn)
        if self.config.standalone == "keep":
            log.skip(where, f"kept (standalone=keep): backward: {backward.reason}; forward: {forward.reason}")
            return
        if x.shape is None:
            log.skip(where, f"backward: {backward.reason}; forward: {forward.reason}; and x's rank is unknown")
            return
        _replace_with_mul_add(graph, bn, affine, len(x.shape), names)
        log.count("rewritten as Mul+Add")


def _where(bn: ir.Node) -> str:
    """How declines name a BN: its name, else its output's."""
    return bn.name or bn.outputs[0].name or "BatchNormalization"


def _inference_affine(bn: ir.Node) -> ChannelAffine | Decline:
    """The BN's ``(s, t)``, or why it cannot be treated as a fixed affine map."""
    if bn.attributes.get_int("training_mode", 0):
        return Decline(_where(bn), "training_mode=1 (uses batch statistics)")
    if len(bn.outputs) > 1:
        return Decline(_where(bn), "training-mode BN (running-statistics outputs present)")
    if attribute(bn, "spatial", 1) != 1:
        return Decline(_where(bn), "spatial=0 BN is not a per-channel map")
    params = [constant_array(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params):
        return Decline(_where(bn), "scale, bias, mean or variance is not a constant")
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
    if params[0].dtype.kind != "f":  # type: ignore[union-attr]
        return Decline(_where(bn), "parameters are not floating point")
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    x = bn.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    return ChannelAffine(scale, beta - mean * scale, axis=1, rank=rank)


def _fold_forward(graph: ir.Graph, bn: ir.Node, affine: ChannelAffine, names: NameSource) -> Decline | None:
    """Fold into the Conv consumers of ``y``, hopping over MaxPools when every scale is positive.

    The hopped MaxPool outputs no longer hold normalized values, so they get
    new names: a name that survives a pass keeps its meaning.
    """
    value = bn.outputs[0]
    hopped = []
    while (
        not value.is_graph_output()
        and len(value.uses()) == 1
        and (pool := next(iter(value.uses())).node).op_type == "MaxPool"
        and pool.domain == ""
        and (len(pool.outputs) == 1 or not pool.outputs[1].uses())
        and bool(np.all(affine.scale > 0))
    ):
        value = pool.outputs[0]
        hopped.append(value)
    declined = fold_into_consumer_convs(value, affine, names)
    if declined is None:
        x = bn.inputs[0]
        assert x is not None
        bypass_node(graph, bn, x, bn.outputs[0])
        for pooled in hopped:
            pooled.name = names.fresh(f"{pooled.name}_before_bn")
    return declined


def _replace_with_mul_add(graph: ir.Graph, bn: ir.Node, affine: ChannelAffine, rank: int, names: NameSource) -> None:
    x, y = bn.inputs[0], bn.outputs[0]
    assert x is not None
    dtype = constant_array(bn.inputs[1]).dtype  # type: ignore[union-attr]
    channel_shape = (affine.channels,) + (1,) * max(rank - 2, 0)
    base = bn.name or "bn"
    constants = []
    for what, vector in (("scale", affine.scale), ("shift", affine.shift)):
        name = names.fresh(f"{base}_{what}")
        value = ir.Value(name=name, const_value=ir.tensor(vector.reshape(channel_shape).astype(dtype), name=name))
        graph.register_initializer(value)
        constants.append(value)
    mul = ir.node("Mul", [x, constants[0]], name=names.fresh(f"{base}_mul"))
    mul.outputs[0].name = names.fresh(f"{base}_scaled")
    copy_type(x, mul.outputs[0])
    add = ir.node("Add", [mul.outputs[0], constants[1]], name=names.fresh(f"{base}_add"))
    graph.insert_before(bn, [mul, add])
    out = add.outputs[0]
    copy_type(y, out)
    out.name = names.fresh(f"{base}_out")
    bypass_node(graph, bn, out, y, x_now_equals_y=True)
