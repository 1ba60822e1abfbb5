"""Deduplication of identical initializers.

Contract:
  * Initializers of one graph with the same dtype, shape and bytes (a
    SHA-512 of the data, confirmed byte for byte) are merged: every use reads
    the first one and the others are dropped (onnx_ir's
    ``DeduplicateHashedInitializersPass``).
  * Kept: initializers that are also graph inputs (a caller may override
    them) and graph outputs.
Lossless: the merged tensors hold identical values.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.passes.base import OptPass


class DeduplicateInitializersPass(OptPass):
    """Merge initializers that hold identical tensors."""

    name = "dedup-initializers"

    def rewrite(self, model: ir.Model) -> None:
        before = sum(len(g.initializers) for g in model.graphs())
        common.DeduplicateHashedInitializersPass()(model)
        self.count("initializers merged", before - sum(len(g.initializers) for g in model.graphs()))
