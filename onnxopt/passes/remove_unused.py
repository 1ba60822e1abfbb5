"""Dead-code removal: nodes, initializers, functions and opset imports nothing uses.

Contract:
  * Removes every node none of whose outputs reaches a graph output (in the
    main graph, subgraphs and functions), every initializer no node reads
    that is not a graph input or output, unused model-local functions, and
    opset imports no node uses.
  * Keeps the model's signature: inputs and outputs are never removed.
Lossless: removed values are never observed.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.model_stats import graph_size
from onnxopt.passes.base import OptPass, PassLog


class RemoveUnusedPass(OptPass):
    """Remove nodes, initializers, functions and opset imports that nothing uses."""

    name = "remove-unused"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        nodes_before, inits_before = graph_size(model)
        functions_before = len(model.functions)
        common.RemoveUnusedNodesPass()(model)
        common.RemoveUnusedFunctionsPass()(model)
        opsets = common.RemoveUnusedOpsetsPass()(model).modified
        nodes_after, inits_after = graph_size(model)
        log.count("nodes removed", nodes_before - nodes_after)
        log.count("initializers removed", inits_before - inits_after)
        log.count("functions removed", functions_before - len(model.functions))
        log.count("opset imports removed", int(opsets))
