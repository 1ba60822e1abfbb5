"""Initializers removed from the graph-input list (IR < 4 models list every weight there).

Contract: every graph input that is also an initializer stops being a graph
input (onnx_ir's ``RemoveInitializersFromInputsPass``), and an IR version
below 4 is raised to 4, the first that allows initializers outside the input
list (so later passes may add initializers).
onnxruntime already treats such inputs as optional, so the inputs a caller
must feed do not change; what changes is that the weights become constants
that the folding passes -- and onnxruntime -- may rely on. Lossless.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.passes.base import OptPass, PassLog

MIN_IR_VERSION = 4


class RemoveInitializerInputsPass(OptPass):
    """Make weights listed as graph inputs (IR < 4 style) plain constants."""

    name = "remove-initializer-inputs"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        before = sum(len(g.inputs) for g in model.graphs())
        common.RemoveInitializersFromInputsPass()(model)
        removed = before - sum(len(g.inputs) for g in model.graphs())
        log.count("inputs made constant", removed)
        if model.ir_version < MIN_IR_VERSION:
            model.ir_version = MIN_IR_VERSION
            log.count("IR version raised to 4")
