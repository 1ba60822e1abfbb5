"""Each activation's clipping range chosen by the error it causes in the layer that reads it (numpy only).

``calibration=auto`` computes every candidate range of a tensor -- ``minmax``,
``percentile``, ``mse`` and ``entropy`` (:mod:`onnxopt.passes.quantize.range_search`)
-- and keeps the one whose quantization error costs its readers least:

* read by weight layers (Conv through sampled im2col patches, Gemm, 2-D
  MatMul; :class:`ReaderRows` keeps up to :data:`ROWS` real input rows of each
  from calibration): the relative output error ``||(q(X) - X) W^T||^2 /
  ||X W^T||^2`` of each reader, summed over the readers. Clipping errors are
  biased and correlated across a patch; measuring through the weight counts
  them as the layer sees them, which the tensor's own round-trip error does
  not;
* read only by ops without a weight (Add, Concat, pooling): the round-trip
  mean squared error of the tensor's sampled values.

Ties go to the earlier candidate of :data:`CANDIDATES` (minmax first: no
clipping unless it measurably helps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import attribute, constant_array
from onnxopt.passes._im2col import output_size, patches_at, pick_positions
from onnxopt.passes.quantize.activation_ranges import reservoir_update
from onnxopt.passes.quantize.range_search import quantize_roundtrip

#: The methods ``calibration=auto`` chooses among, in the order ties are broken.
CANDIDATES = ("minmax", "percentile", "mse", "entropy")
ROWS = 512  # input rows kept per reader (a uniform sample of every calibration row)
POSITIONS = 8  # sampled output positions per image for a Conv reader
MAX_COLUMNS = 4608  # readers with longer rows are left out (ROWS x columns floats each)

Range = tuple[float, float]


def _reader_matrix(node: ir.Node) -> tuple[int, np.ndarray] | None:
    """(groups, weight as ``[groups, columns, outputs per group]``) of a reader the error is measured through."""
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f" or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Conv":
        if weight.ndim != 4 or attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None
        groups = int(attribute(node, "group", 1))
        if weight.shape[0] % groups:
            return None
        per_group = weight.reshape(groups, weight.shape[0] // groups, -1)  # [G, O/G, C/G*kh*kw]
        matrix = per_group.transpose(0, 2, 1)
    elif node.op_type == "Gemm" and weight.ndim == 2 and not attribute(node, "transA", 0):
        groups, matrix = 1, (weight.T if attribute(node, "transB", 0) else weight)[None]
    elif node.op_type == "MatMul" and weight.ndim == 2:
        groups, matrix = 1, weight[None]
    else:
        return None
    if matrix.shape[1] > MAX_COLUMNS:
        return None
    return groups, matrix.astype(np.float64)


class ReaderRows:
    """A uniform sample of the input rows each weight layer multiplies, from calibration batches."""

    def __init__(self, tensors: list[ir.Value], seed: int) -> None:
        self.readers: dict[str, list[tuple[ir.Node, int, np.ndarray]]] = {}
        for value in tensors:
            for use in value.uses():
                if use.idx != 0:
                    continue
                found = _reader_matrix(use.node)
                if found is not None and value.name:
                    self.readers.setdefault(value.name, []).append((use.node, *found))
        self.rows: dict[tuple[str, int], np.ndarray] = {}
        self.seen: dict[tuple[str, int], int] = {}
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, x: np.ndarray) -> None:
        for i, (node, groups, matrix) in enumerate(self.readers.get(name, ())):
            if node.op_type == "Conv":
                if x.ndim != 4:
                    continue
                oh, ow = output_size(node, x.shape[2], x.shape[3])
                picks = np.stack([pick_positions(oh, ow, POSITIONS, self.rng) for _ in range(x.shape[0])])
                rows, _ = patches_at(node, x, picks)
            else:
                rows = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            if rows.shape[1] != groups * matrix.shape[1]:
                continue
            self._keep((name, i), rows.astype(np.float32))

    def _keep(self, key: tuple[str, int], rows: np.ndarray) -> None:
        kept = self.rows.get(key, np.empty((0, rows.shape[1]), np.float32))
        seen = self.seen.get(key, 0)
        self.rows[key] = reservoir_update(kept, seen, rows, ROWS, self.rng)
        self.seen[key] = seen + len(rows)

    def output_error(self, name: str, low: float, high: float, kind: str) -> float | None:
        """Sum over ``name``'s readers of their relative output error with the input quantized to [low, high];
        None when no reader's rows were seen."""
        total, measured = 0.0, False
        for i, (_node, groups, matrix) in enumerate(self.readers.get(name, ())):
            rows = self.rows.get((name, i))
            if rows is None or not len(rows):
                continue
            x = rows.astype(np.float64)
            error = quantize_roundtrip(x, low, high, kind) - x
            columns = matrix.shape[1]
            grouped = x.reshape(len(x), groups, columns).transpose(1, 0, 2)  # [G, P, K]
            error = error.reshape(len(x), groups, columns).transpose(1, 0, 2)
            signal = float(np.sum(np.matmul(grouped, matrix) ** 2))
            total += float(np.sum(np.matmul(error, matrix) ** 2)) / max(signal, 1e-30)
            measured = True
        return total if measured else None


def choose_range(
    candidates: dict[str, Range], score: Callable[[float, float], float]
) -> tuple[str, Range, dict[str, float]]:
    """(method, range, every candidate's error): the candidate ``score`` rates lowest, ties to the earlier."""
    errors = {method: score(*candidate) for method, candidate in candidates.items()}
    best = min(errors, key=lambda method: (errors[method], list(candidates).index(method)))
    return best, candidates[best], errors


def roundtrip_error(values: np.ndarray, low: float, high: float, kind: str) -> float:
    """Mean squared round-trip error of the sampled ``values`` quantized to [low, high]."""
    values = values.astype(np.float64)
    return float(np.mean((quantize_roundtrip(values, low, high, kind) - values) ** 2))
