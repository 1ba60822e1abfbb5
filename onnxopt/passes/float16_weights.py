"""Float16 *storage* for float32 weights: half the file, float32 compute, an error of fp16 rounding.

A float32 initializer ``W`` is stored as ``W_fp16`` (float16) and rebuilt in the graph with
``Cast<float>(W_fp16)``, whose output keeps the name ``W``, so every reader reads it as before. The Cast reads a
constant, so onnxruntime's constant folding turns it back into one float32 initializer when it creates the
session: the running graph is the float32 one with the rounded weights, and no call pays for the decoding
(what onnxruntime runs has no Cast left; ``tests/test_float16_weights.py``).

Contract:

* Matches float32 initializers of the main graph with at least ``min_elements`` elements, whatever reads them
  (convolutions, matrix products, LSTM gates, embedding tables, biases; nodes of subgraphs too). Initializers
  nothing reads are left to ``remove-unused``.
* Guarantees: each stored weight differs from the original by its float16 rounding only (about 2^-12 of each
  value; the pipeline measures what that does to the outputs); the model's inputs, outputs and every value name
  are kept.
* Declines, leaving the weight as it was: initializers that are graph inputs (overridable) or graph outputs,
  non-finite weights, weights beyond float16's range (65,504), and weights whose float16 rounding changes them by
  more than ``max_error`` of their norm (tiny values become float16 subnormals). With no weight to store it
  declines for the model and changes nothing.

Run it last: a later ``fold-constants`` folds the Casts back into float32 initializers, and passes that rewrite
weights (``quantize``, ``prune-channels``) see Cast outputs, not constants.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, add_initializer
from onnxopt.passes.base import OptPass, PassLog

#: The largest finite float16.
FLOAT16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class Float16WeightsConfig:
    min_elements: int = dataclasses.field(
        default=128, metadata={"help": "smaller initializers stay float32 (the Cast costs about 60 bytes)"}
    )
    max_error: float = dataclasses.field(
        default=1e-3, metadata={"help": "largest ||W - fp16(W)|| / ||W|| of a stored weight"}
    )

    def __post_init__(self) -> None:
        if self.min_elements < 1:
            raise ValueError("min_elements must be at least 1")
        if not 0 < self.max_error < 1:
            raise ValueError("max_error must be in (0, 1)")


class StoreWeightsFloat16Pass(OptPass):
    """Store float32 weights as float16 with a Cast back to float32 (folded by onnxruntime at load)."""

    name = "float16-weights"
    Config = Float16WeightsConfig
    lossless = False

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        graph = model.graph
        names = NameSource(model)
        casts: list[ir.Node] = []
        for value in list(graph.initializers.values()):
            if value.dtype != ir.DataType.FLOAT or value.const_value is None:
                continue
            array = value.const_value.numpy()
            if array.size < self.config.min_elements or not value.uses():
                continue  # small, or read by nothing (remove-unused's to drop)
            reason = self._refusal(value, array)
            if reason is not None:
                log.skip(value.name or "?", reason)
                continue
            casts.append(self._store(graph, names, value, array))
            log.count("weights stored as float16")
            log.count("bytes saved", 2 * int(array.size))
        if not casts:
            log.skip(
                "model", f"no weight stored (none of at least {self.config.min_elements} elements that float16 holds)"
            )
            return
        graph.insert_before(next(iter(graph)), casts)  # they read only constants: first is topologically sound
        log.mark_modified()

    def _refusal(self, value: ir.Value, array: np.ndarray) -> str | None:
        if value.is_graph_input():
            return "a graph input (its value may be overridden)"
        if value.is_graph_output():
            return "a graph output"
        if not np.isfinite(array).all():
            return "not finite"
        peak = float(np.abs(array).max())
        if peak > FLOAT16_MAX:
            return f"|w| reaches {peak:.3g}, beyond float16's {FLOAT16_MAX:g}"
        norm = float(np.linalg.norm(array))
        error = float(np.linalg.norm(array.astype(np.float16).astype(np.float32) - array)) / norm if norm else 0.0
        if error > self.config.max_error:
            return f"float16 would change it by {error:.2g} of its norm (> max_error {self.config.max_error:g})"
        return None

    @staticmethod
    def _store(graph: ir.Graph, names: NameSource, value: ir.Value, array: np.ndarray) -> ir.Node:
        """Replace the initializer ``value`` by a float16 one and a Cast whose output takes its name; the Cast."""
        name = value.name or names.fresh("weight")
        stored = add_initializer(graph, names.fresh(f"{name}_fp16"), array.astype(np.float16))
        cast = ir.node("Cast", [stored], attributes={"to": ir.DataType.FLOAT}, name=names.fresh(f"{name}_cast"))
        decoded = cast.outputs[0]
        decoded.dtype, decoded.shape = ir.DataType.FLOAT, ir.Shape(array.shape)
        for use in list(value.uses()):
            use.node.replace_input_with(use.idx, decoded)
        del graph.initializers[name]
        decoded.name = name
        return cast
