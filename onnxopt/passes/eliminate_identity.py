"""Identity and inference-Dropout elimination.

Contract:
  * ``Dropout`` in inference (no ``training_mode`` input, or a constant
    false one; its ``mask`` output unused) is an identity and is removed.
  * ``y = Identity(x)`` is removed and ``y``'s uses read ``x`` (onnx_ir's
    ``IdentityEliminationPass``); when ``y`` is a graph output, ``x`` takes
    its name.
  * Kept: an Identity that copies a graph input straight to a graph output
    (removing it would change the signature); a Dropout whose mask is used
    or whose training mode is not a known false.
Lossless: both ops return their input unchanged in inference.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.model_stats import graph_size
from onnxopt.passes._graph_edit import replace_value
from onnxopt.passes.base import Decline, OptPass, PassLog


class EliminateIdentityPass(OptPass):
    """Remove Identity nodes and inference-mode Dropout."""

    name = "eliminate-identity"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
                declined = _dropout_not_identity(node)
                if declined:
                    log.decline(declined)
                    continue
                _turn_into_identity(node)
                log.count("dropouts removed")
        nodes_before, _ = graph_size(model)
        common.IdentityEliminationPass()(model)
        nodes_after, _ = graph_size(model)
        log.count("identities removed", nodes_before - nodes_after - log.counts["dropouts removed"])


def _dropout_not_identity(node: ir.Node) -> Decline | None:
    """Why the Dropout ``node`` is not an identity in inference, or None."""
    where = node.name or node.op_type
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return Decline(where, "its mask output is used")
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = node.inputs[2].const_value
        if mode is None:
            return Decline(where, "training_mode is not a constant")
        if bool(np.asarray(mode.numpy()).any()):
            return Decline(where, "training_mode is true")
    return None


def _turn_into_identity(node: ir.Node) -> None:
    """Replace ``node`` by an Identity of its data input with the same output value."""
    graph = node.graph
    assert graph is not None
    identity = ir.node("Identity", [node.inputs[0]], name=node.name)
    graph.insert_before(node, identity)
    replace_value(node.outputs[0], identity.outputs[0])
    graph.remove(node, safe=True)
