"""Channel factorization of a 2-D Conv, fitted to data: the algebra and the rewrite ``low-rank`` uses on Convs.

A Conv with a ``C_out x C_in x kh x kw`` weight ``W`` computes, at every output
position, ``y = W x + b`` on the ``D = C_in kh kw`` input patch ``x``. It is
replaced by a Conv with ``r`` outputs (same kernel, strides, pads, dilations)
followed by a 1x1 Conv back to ``C_out`` (which carries ``b``):

    y = Q (P x) + b          P: r x D,  Q: C_out x r

where ``Q P`` is the rank-``r`` weight minimizing ``||X (W^T - P^T Q^T)||`` over
the data's patches ``X`` (the same data-aware SVD ``low-rank`` fits heads with:
``X^T X = R^T R``, truncated SVD of ``R W^T``). MACs per output position fall
from ``D C_out`` to ``r (D + C_out)``. The channel decomposition of Zhang et al.
("Accelerating Very Deep Convolutional Networks", 2015), without its
nonlinear refinement.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, add_initializer, attribute, constant_array, remove_node_and_orphans
from onnxopt.passes.base import Decline

#: Ranks tried are multiples of this (onnxruntime's CPU convolutions are fastest on channel counts in 8s).
RANK_STEP = 8


def conv_unsupported(node: ir.Node) -> Decline | None:
    """Why ``node`` (a Conv) cannot be factored, or None."""
    where = node.name or node.op_type
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.inputs[0] is None or constant_array(node.inputs[0]) is not None:
        return Decline(where, "its input is a constant (nothing to fit on data)")
    if weight is None or weight.dtype != np.float32 or weight.ndim != 4 or not np.isfinite(weight).all():
        return Decline(where, "its weight is not a finite float32 2-D kernel")
    if len(node.inputs[1].uses()) != 1:
        return Decline(where, "its weight is shared")
    if attribute(node, "group", 1) != 1:
        return Decline(where, "grouped or depthwise (each group is already thin)")
    if attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return Decline(where, "auto_pad is not supported; explicit pads only")
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant_array(node.inputs[2]) is None:
        return Decline(where, "its bias is not a constant")
    return None


def conv_ranks(weight: np.ndarray, max_ratio: float) -> list[int]:
    """The ranks (multiples of :data:`RANK_STEP`, smallest first) whose factored Conv costs at most ``max_ratio``
    of ``weight``'s MACs."""
    c_out, d = weight.shape[0], int(np.prod(weight.shape[1:]))
    return [r for r in range(RANK_STEP, c_out, RANK_STEP) if r * (d + c_out) <= max_ratio * d * c_out]


def conv_macs_ratio(weight: np.ndarray, rank: int) -> float:
    """The factored Conv's MACs over the original's."""
    c_out, d = weight.shape[0], int(np.prod(weight.shape[1:]))
    return rank * (d + c_out) / (d * c_out)


class ConvFactors:
    """The data-aware SVD of one Conv's weight, from its patches' Gram matrix; :meth:`at` gives any rank."""

    def __init__(self, weight: np.ndarray, gram: np.ndarray, ridge: float) -> None:
        self.shape = weight.shape
        w_dk = weight.reshape(weight.shape[0], -1).T.astype(np.float64)  # D x C_out
        d = gram.shape[0]
        lam = ridge * float(np.trace(gram)) / d
        self.upper = np.linalg.cholesky(gram + lam * np.eye(d)).T  # X^T X = R^T R
        self.u, self.s, self.vt = np.linalg.svd(self.upper @ w_dk, full_matrices=False)

    def at(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(first Conv's ``r x C_in x kh x kw`` kernel, 1x1 Conv's ``C_out x r x 1 x 1`` kernel), float32."""
        p = np.linalg.solve(self.upper, self.u[:, :rank] * self.s[:rank])  # D x r
        c_out, c_in, kh, kw = self.shape
        first = p.T.reshape(rank, c_in, kh, kw).astype(np.float32)
        second = self.vt[:rank].T.reshape(c_out, rank, 1, 1).astype(np.float32)
        return first, second


def rewrite_conv(graph: ir.Graph, node: ir.Node, first: np.ndarray, second: np.ndarray, names: NameSource) -> None:
    """Replace the Conv ``node`` by ``first`` (its geometry, ``r`` outputs) then the 1x1 ``second`` (its bias);
    the output keeps its name, shape and type."""
    base = node.name or "conv"
    x, old = node.inputs[0], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    thin = ir.node(
        "Conv",
        [x, add_initializer(graph, names.fresh(f"{base}_thin_w"), first)],
        attributes={a.name: a for a in node.attributes.values() if a.name != "kernel_shape"},
        name=names.fresh(f"{base}_thin"),
    )
    thin.outputs[0].name, thin.outputs[0].dtype = names.fresh(f"{base}_thin"), ir.DataType.FLOAT
    inputs = [thin.outputs[0], add_initializer(graph, names.fresh(f"{base}_wide_w"), second)]
    wide = ir.node("Conv", inputs + ([bias] if bias is not None else []), name=names.fresh(f"{base}_wide"))
    out = wide.outputs[0]
    graph.insert_after(node, [thin, wide])
    name = old.name
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    old.name = None
    out.name, out.dtype, out.shape = name, ir.DataType.FLOAT, old.shape
    remove_node_and_orphans(graph, node)
