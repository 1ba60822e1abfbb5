"""Constant folding: evaluate every node whose inputs are all known.

Contract:
  * Matches any node whose inputs are initializers or Constants (within the
    size limits), ``Shape`` of a statically known shape, and the chains those
    enable -- e.g. ``ConstantOfShape(Shape(x))`` weights, ``Transpose(W)``,
    ``Reshape`` of constant shapes.
  * Replaces them by initializers holding the computed value (onnxscript's
    ``FoldConstantsPass`` evaluates them with the ONNX reference semantics),
    then lifts every remaining ``Constant`` node into an initializer.
  * Declines ops with side effects or randomness (onnxscript's deny list) and
    tensors above the size limits, which stay computed at run time; declines
    the whole model below opset 13 when it holds ConcatFromSequence or
    SplitToSequence, which onnxscript rewrites with opset-13-only Unsqueeze/Split.
Lossless: the folded values are exactly what the nodes would compute.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from onnxopt.model_stats import graph_size
from onnxopt.passes._config import validate_literals
from onnxopt.passes.base import Decline, OptPass, PassLog


@dataclasses.dataclass(frozen=True)
class FoldConstantsConfig:
    max_input: int = dataclasses.field(
        default=16 * 1024 * 1024, metadata={"help": "the most elements of a tensor folding may read"}
    )
    max_output: int = dataclasses.field(
        default=16 * 1024 * 1024, metadata={"help": "the most elements of a tensor folding may produce"}
    )

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.max_input < 0 or self.max_output < 0:
            raise ValueError("max_input and max_output must be >= 0")


class FoldConstantsPass(OptPass):
    """Fold constant subgraphs (incl. ConstantOfShape weights and static Shape chains) into initializers."""

    name = "fold-constants"
    Config = FoldConstantsConfig

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        unsafe = _opset_unsafe_rewrites(model)
        if unsafe:
            log.decline(unsafe)
            return
        nodes_before, inits_before = graph_size(model)
        ir_version = model.ir_version
        model.ir_version = max(ir_version, 4)  # IR 3 requires every initializer to be a graph input; 4 does not
        folded = onnxscript.optimizer.fold_constants_ir(
            model,
            onnx_shape_inference=False,
            input_size_limit=self.config.max_input,
            output_size_limit=self.config.max_output,
            should_fold=self._should_fold,
        ).modified
        lifted = common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model).modified
        nodes_after, inits_after = graph_size(model)
        if folded or lifted:
            log.mark_modified()
            log.count("nodes removed", max(nodes_before - nodes_after, 0))
            log.count("nodes added", max(nodes_after - nodes_before, 0))
            log.count("initializers added", max(inits_after - inits_before, 0))
            log.count("initializers removed", max(inits_before - inits_after, 0))
        else:
            model.ir_version = ir_version  # nothing folded: leave the model exactly as it was

    def _should_fold(self, node: ir.Node) -> bool | None:
        """Fold ConstantOfShape (onnxscript keeps it by default) when its output is within the limit."""
        if node.op_type != "ConstantOfShape" or node.domain != "":
            return None
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        if shape is None:
            return False
        return int(np.prod(shape.numpy())) <= self.config.max_output


def _opset_unsafe_rewrites(model: ir.Model) -> Decline | None:
    """Why onnxscript's folder would write nodes invalid for this model's opset, if it would.

    Its ConcatFromSequence and SplitToSequence rewrites emit ``Unsqueeze(x, axes)``
    and ``Split(x, split)``, the opset-13 signatures, whatever the model's opset.
    """
    opset = model.opset_imports.get("", 0)
    if opset >= 13:
        return None
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in ("ConcatFromSequence", "SplitToSequence") and node.domain == "":
            return Decline(
                Decline.MODEL,
                f"{node.op_type} at opset {opset}: onnxscript's folding would emit opset-13-only Unsqueeze/Split",
            )
    return None
