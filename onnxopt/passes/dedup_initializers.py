"""Deduplication of identical initializers.

Contract:
  * Initializers of one graph (main graph and each subgraph) with the same
    dtype, shape and bytes are merged: every use reads the first one and the
    others are dropped. Identity is a SHA-256 of the bytes, confirmed byte
    for byte before merging.
  * Kept: initializers that are also graph inputs (a caller may override
    them) or graph outputs.
Lossless: the merged tensors hold identical values.

Written here rather than wrapping onnx_ir's ``DeduplicateHashedInitializersPass``,
which hashes ``tensor.numpy()`` directly and fails on non-contiguous arrays
(as constant folding produces, e.g. from Transpose).
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

from onnxopt.passes.base import OptPass, PassLog


class DeduplicateInitializersPass(OptPass):
    """Merge initializers that hold identical tensors."""

    name = "dedup-initializers"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        for graph in model.graphs():
            seen: dict[tuple[object, tuple[int, ...], str], ir.Value] = {}
            for value in list(graph.initializers.values()):
                tensor = value.const_value
                if tensor is None or value.is_graph_input() or value.is_graph_output():
                    continue
                data = _buffer(tensor)
                key = (tensor.dtype, tuple(tensor.shape.numpy()), hashlib.sha256(data).hexdigest())
                kept = seen.get(key)
                if kept is None:
                    seen[key] = value
                    continue
                if _buffer(kept.const_value) != data:  # type: ignore[arg-type]
                    continue  # a hash collision: keep both
                value.replace_all_uses_with(kept)
                assert value.name is not None
                graph.initializers.pop(value.name)
                log.count("initializers merged")


def _buffer(tensor: ir.TensorProtocol) -> bytes | memoryview:
    """The tensor's bytes, without copying a contiguous array (hashing 100 MB twice over is not free)."""
    if tensor.dtype == ir.DataType.STRING:
        return b"\0".join(tensor.string_data())  # type: ignore[attr-defined]
    return memoryview(np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8))
