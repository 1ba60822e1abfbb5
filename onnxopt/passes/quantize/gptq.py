"""Learned weight rounding: GPTQ (Frantar et al. 2023, after OBQ) for Conv, Gemm and MatMul weights.

Rounding each weight to its nearest int8 level ignores that a layer's output
error is ``(W - Q) X``: the error of one input column can be cancelled by
nudging the columns not yet rounded, in proportion to how the inputs
correlate. With ``H = X^T X`` over calibration inputs (for a Conv, the im2col
patches at sampled output positions), GPTQ rounds the columns one at a time
and spreads each column's error over the remaining ones through the Cholesky
factor of ``H^-1``; the per-output-channel scales stay those of plain
max-abs rounding, so the integer format is unchanged and only *which* level
each weight takes moves. It minimizes the layer's output error on the data
rather than the weights' own error.

:class:`HessianCollector` accumulates ``H`` per layer from the activations the
quantizer already streams for calibration (float inputs of the original
model, one pass) and factors it once per layer
(:meth:`HessianCollector.inverse_factor`: the two roundings of one layer, to 8
bits for weight storage and to 7 for u8s8 kernels, share it); :func:`gptq_round`
rounds one weight. Grouped convolutions (depthwise included) get one ``H`` per
group. Memory is bounded: a layer whose
rows hold more than :data:`MAX_COLUMNS` inputs (``C_in/g * kh * kw``), a Conv
with ``auto_pad`` or not 2-D, ConvTranspose, and weights of more than 2-D
MatMuls keep nearest rounding (``gptq_round`` is not called for them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from scipy.linalg import lapack

from onnxopt.passes._graph_edit import attribute, constant_array
from onnxopt.passes._im2col import output_size, patches_at, pick_positions

#: Layers with more inputs per output channel keep nearest rounding (H would be MAX_COLUMNS² floats).
MAX_COLUMNS = 4608
POSITIONS = 32  # sampled output positions per image for a Conv's patches
DAMP = 0.01  # fraction of H's mean diagonal added to it (GPTQ's dampening)
BLOCK = 128  # columns rounded between two updates of the remaining ones
FLUSH_ROWS = 2048  # input rows gathered per layer before they are added to its H


def gptq_layout(node: ir.Node) -> tuple[int, int] | None:
    """(groups, columns per group) of ``node``'s weight as GPTQ sees it; None when it keeps nearest rounding."""
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    x = node.inputs[0] if node.inputs else None
    if weight is None or x is None or weight.dtype.kind != "f" or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Conv":
        if weight.ndim != 4 or attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None
        groups = int(attribute(node, "group", 1))
        columns = int(np.prod(weight.shape[1:]))
    elif node.op_type == "Gemm":
        if attribute(node, "transA", 0) or weight.ndim != 2:
            return None
        groups, columns = 1, weight.shape[1] if attribute(node, "transB", 0) else weight.shape[0]
    elif node.op_type == "MatMul" and weight.ndim == 2:
        groups, columns = 1, weight.shape[0]
    else:
        return None
    return (groups, columns) if columns <= MAX_COLUMNS else None


class HessianCollector:
    """``H = X^T X`` (and the row count) per layer, from batches of each layer's float input."""

    def __init__(self, nodes: list[ir.Node], seed: int) -> None:
        layouts = {n.name: (n, gptq_layout(n)) for n in nodes}
        self.nodes = {name: node for name, (node, layout) in layouts.items() if layout is not None}
        self.layouts = {name: layout for name, (_, layout) in layouts.items() if layout is not None}
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}
        self.pending: dict[str, list[np.ndarray]] = {}  # input rows not yet in the sum
        self.factors: dict[str, np.ndarray] = {}  # layer -> inverse_factor (its sum is dropped then)
        self.rng = np.random.default_rng(seed)

    def inputs(self) -> dict[str, list[str]]:
        """Input tensor name -> the layers reading it."""
        out: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            out.setdefault(node.inputs[0].name or "", []).append(name)
        return out

    def add(self, layer: str, x: np.ndarray) -> None:
        node = self.nodes[layer]
        groups, columns = self.layouts[layer]
        if node.op_type == "Conv":
            if x.ndim != 4:
                return
            oh, ow = output_size(node, x.shape[2], x.shape[3])
            picks = np.stack([pick_positions(oh, ow, POSITIONS, self.rng) for _ in range(x.shape[0])])
            # [P, C_in * kh * kw], channel-major: groups are contiguous; float32 products of FLUSH_ROWS rows
            # (relative error ~1e-6) summed in float64
            rows, _ = patches_at(node, x, picks, np.float32)
        else:
            rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        if rows.shape[1] != groups * columns:
            return
        pending = self.pending.setdefault(layer, [])
        pending.append(rows)
        self.rows[layer] = self.rows.get(layer, 0) + rows.shape[0]
        if sum(len(r) for r in pending) >= FLUSH_ROWS:  # one big product, not one per small batch
            self._flush(layer)

    def _flush(self, layer: str) -> None:
        pending = self.pending.pop(layer, [])
        if not pending:
            return
        groups, columns = self.layouts[layer]
        rows = np.concatenate(pending)
        grouped = rows.reshape(rows.shape[0], groups, columns).transpose(1, 0, 2)  # [G, P, K]
        h = np.matmul(grouped.transpose(0, 2, 1), grouped)  # batched BLAS
        self.sums[layer] = self.sums.get(layer, 0.0) + h.astype(np.float64)

    def _hessian(self, layer: str) -> np.ndarray | None:
        """``[G, K, K]`` for ``layer``, or None if no input of it was seen."""
        self._flush(layer)
        total = self.sums.get(layer)
        return None if total is None else total / max(self.rows[layer], 1)

    def inverse_factor(self, layer: str) -> np.ndarray | None:
        """The float32 upper Cholesky factor of ``(H + damp)^-1`` per group ``[G, K, K]`` that
        :func:`gptq_round` takes, computed once per layer (``H``'s float64 sum is freed then); None if no
        input of ``layer`` was seen."""
        if layer not in self.factors:
            hessian = self._hessian(layer)
            if hessian is None:
                return None
            self.factors[layer] = inverse_cholesky_factor(hessian)
            self.sums.pop(layer, None)
        return self.factors[layer]


def gptq_round(node: ir.Node, weight: np.ndarray, upper: np.ndarray, weight_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight in ``weight``'s layout, float32 per-output-channel scales) rounded by GPTQ with ``upper``,
    the layer's :meth:`HessianCollector.inverse_factor` ``[G, K, K]``; the scales are max-abs /
    ``weight_max``, as nearest rounding's."""
    groups = upper.shape[0]
    rows, restore, scale = weight_rows(node, weight, weight_max)
    per_group = rows.shape[0] // groups
    # [G, K, R]: one input column of every output channel is a contiguous row
    w = np.ascontiguousarray(rows.reshape(groups, per_group, -1).transpose(0, 2, 1))
    s = scale.astype(np.float32).reshape(groups, 1, per_group)
    q = np.zeros_like(w)
    columns = w.shape[1]
    for start in range(0, columns, BLOCK):  # GPTQ's lazy batches: the rest is updated once per block, by BLAS
        stop = min(start + BLOCK, columns)
        block = w[:, start:stop].copy()
        errors = np.zeros_like(block)
        for j in range(stop - start):
            i = start + j
            column = block[:, j : j + 1]  # [G, 1, R]
            level = np.clip(np.round(column / s), -weight_max, weight_max)
            q[:, i : i + 1] = level
            error = (column - level * s) / upper[:, i, i][:, None, None]
            block[:, j + 1 :] -= upper[:, i, i + 1 : stop][:, :, None] * error
            errors[:, j : j + 1] = error
        if stop < columns:
            w[:, stop:] -= np.matmul(upper[:, start:stop, stop:].transpose(0, 2, 1), errors)
    q = q.transpose(0, 2, 1)  # back to [G, R, K]
    levels = restore(q.reshape(rows.shape)).astype(np.int8)
    return np.ascontiguousarray(levels), scale.astype(np.float32)


def nearest_levels(node: ir.Node, weight: np.ndarray, weight_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 levels nearest rounding gives ``weight`` in its layout, the scales) at :func:`gptq_round`'s
    scales: what a plan stores GPTQ's levels as the difference from
    (:mod:`onnxopt.passes.quantize.planned_calibration`)."""
    rows, restore, scale = weight_rows(node, weight, weight_max)
    scale32 = scale.astype(np.float32)
    levels = np.clip(np.round(rows / scale32[:, None]), -weight_max, weight_max)
    return np.ascontiguousarray(restore(levels).astype(np.int8)), scale32


def weight_rows(node: ir.Node, weight: np.ndarray, weight_max: int) -> tuple[np.ndarray, Any, np.ndarray]:
    """(``weight`` as float32 rows of output channels, the map back to its layout, float64 max-abs scales)."""
    if node.op_type == "Conv":
        rows = weight.reshape(weight.shape[0], -1).astype(np.float32)  # [C_out, K*G/G]
        restore = lambda m: m.reshape(weight.shape)  # noqa: E731
    elif node.op_type == "Gemm" and attribute(node, "transB", 0):
        rows = weight.astype(np.float32)
        restore = lambda m: m  # noqa: E731
    else:  # Gemm transB=0 and MatMul: [K, N], output channels on axis 1
        rows = weight.T.astype(np.float32)
        restore = lambda m: m.T  # noqa: E731
    peak = np.abs(rows).max(axis=1).astype(np.float64)
    scale = np.where(peak > 0, peak / weight_max, 1.0)  # as nearest rounding's; the loop itself runs in float32
    return rows, restore, scale


#: float32 first; float64 for a group whose float32 Cholesky fails
_FACTORIZATIONS = ((lapack.spotrf, lapack.strtri, np.float32), (lapack.dpotrf, lapack.dtrtri, np.float64))


def inverse_cholesky_factor(hessian: np.ndarray) -> np.ndarray:
    """The float32 upper Cholesky factor of ``(H + damp)^-1`` per group; inputs never seen (zero diagonal)
    get 1.

    Without forming the inverse: with ``J`` the reversal permutation and ``J H J = M M^T`` (lower Cholesky),
    ``H^-1 = (J M^-1 J)^T (J M^-1 J)`` and ``J M^-1 J`` is upper triangular -- so the factor is one Cholesky
    and one triangular inverse, by LAPACK (``potrf``, ``trtri``). In float32, as GPTQ's reference does: the
    damping bounds ``H``'s condition number by about ``100 K`` (4.6e5 at 4608 columns), well inside float32;
    on a correlated 4608-column ``H`` the float32 triangular inverse differed from float64's by 2.2e-6 of
    its largest entry, and the rounding loop runs in float32 anyway. At 4608 columns this took 0.74 s
    (after a warm-up call) on a 2-core AVX2 EPYC, where numpy's float64 Cholesky and a blocked inverse took
    2.7 s. A group whose float32 factorization fails is factored in float64.
    """
    h = np.array(hessian, np.float64)  # a copy: damped below
    k = h.shape[1]
    diagonal = np.einsum("gkk->gk", h)
    dead = diagonal <= 0
    idx = np.arange(k)
    for g in np.nonzero(dead.any(axis=1))[0]:
        h[g, idx[dead[g]], idx[dead[g]]] = 1.0
    damp = DAMP * np.maximum(np.einsum("gkk->gk", h).mean(axis=1), 1e-12)
    h[:, idx, idx] += damp[:, None]
    out = np.empty(h.shape, np.float32)
    for g in range(h.shape[0]):
        flipped = np.ascontiguousarray(h[g, ::-1, ::-1])
        for potrf, trtri, dtype in _FACTORIZATIONS:
            # a symmetric C-ordered matrix is its own Fortran-ordered transpose: LAPACK reads it without a copy
            lower, info = potrf(flipped.astype(dtype, copy=False).T, lower=1, clean=1)
            if info == 0:
                inverse, info = trtri(lower, lower=1)
            if info == 0:
                break
        else:
            raise np.linalg.LinAlgError(f"the damped Hessian of group {g} is not positive definite")
        out[g] = inverse[::-1, ::-1]  # potrf(clean=1) zeroed the upper triangle and trtri leaves it alone
    return out
