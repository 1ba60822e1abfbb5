"""Topological sort of every graph's nodes.

Contract: reorders nodes (main graph, subgraphs, functions) so each comes
after the producers of its inputs, keeping the original order where it is
already valid (onnx_ir's ``TopologicalSortPass``). Counts how many nodes
changed place. Lossless: the computation is the same graph.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.passes.base import OptPass, PassLog


class TopologicalSortPass(OptPass):
    """Order nodes so that every node follows its producers."""

    name = "topo-sort"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        before = [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]
        common.TopologicalSortPass()(model)
        after = [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]
        log.count("nodes moved", sum(a != b for a, b in zip(before, after, strict=True)))
