"""Refit layers by least squares so they reproduce the original model's outputs (layer-wise distillation).

After pruning (or any lossy rewrite), a layer reading changed inputs is given
new weights ``W`` (and bias) minimizing, on calibration data,
``||X W - Y||^2 + lambda ||W||^2`` where ``X`` is the layer's input in the
*current* model and ``Y`` is the same layer's output in the *original* model
(He et al. 2017, "Channel pruning for accelerating very deep neural
networks"). Layers are refit in graph order, each on the inputs the earlier
refits produce, so errors do not pile up.

* Conv (2-D, group 1, explicit pads): im2col on ``positions`` sampled output
  positions per image -- each row is one receptive field ``C_in x kH x kW``;
  a bias is fitted (one is added if the Conv had none).
* Gemm (alpha = beta = 1, transA = 0) and MatMul with a constant 2-D weight:
  one row per sample (every row of a 3-D+ input); Gemm fits its bias,
  MatMul has none to fit.

Memory is bounded: only the normal equations ``X^T X`` and ``X^T Y`` (of size
``D x D`` and ``D x C_out``, in float64) accumulate over batches.
``lambda = ridge * trace(X^T X) / D``. Which layers: ``changed`` (pruning
removed some of their inputs, or an earlier layer was refit so their inputs
moved) or ``all``. A refit is kept only if it lowers the layer's relative
error ``||XW - Y|| / ||Y||`` on the calibration data; the record's details
give that error before and after for every layer tried. Calibrating on the
data that later measures accuracy flatters the result: give held-out data.
Data comes from the run's ``--data`` (random inputs without it -- refits then
only match the original on noise).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.passes._config import validate_literals
from onnxopt.passes._graph_edit import NameSource, attribute, constant_array, set_constant_input
from onnxopt.passes._im2col import patches_at, pick_positions
from onnxopt.passes._weights import scaled_gemm
from onnxopt.passes.base import INPUTS_PRUNED, KEPT_OUTPUTS, Decline, OptPass, PassContext, PassLog

_LINEAR = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    layers: Literal["changed", "all"] = dataclasses.field(
        default="changed", metadata={"help": "which layers to refit: those whose inputs changed, or every one"}
    )
    samples: int = dataclasses.field(default=1024, metadata={"help": "calibration samples the refit reads"})
    positions: int = dataclasses.field(default=64, metadata={"help": "sampled output positions per image (Conv)"})
    # 1e-2 generalized best on held-out digits data
    ridge: float = dataclasses.field(default=1e-2, metadata={"help": "added to X^T X, relative to its mean diagonal"})

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.samples < 1 or self.positions < 1:
            raise ValueError("samples and positions must be positive")
        if self.ridge < 0:
            raise ValueError("ridge must be 0 or more")


class ReconstructPass(OptPass):
    """Refit changed Conv/Gemm/MatMul layers by ridge least squares to the original model's layer outputs."""

    name = "reconstruct"
    Config = ReconstructConfig
    lossless = False
    learns_from_data = True

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        context = self.require_context()
        original = context.original_model()
        # Names keep their meaning through onnxopt's passes: the original's tensor of the same name is the target
        # (after fold-bn a Conv's output carries the name of the BN output it now equals).
        targets = {v.name: node for node in original.graph for v in node.outputs if v.name}
        names = NameSource(model)
        candidates = [
            n for n in model.graph
            if n.op_type in _LINEAR and n.outputs and n.outputs[0].name in targets and not _unsupported(n)
        ]  # fmt: skip
        reference = _reference_rows(context, original, candidates, self.config.samples, self.config.positions)
        upstream_changed = False  # an earlier layer was refit: every later one's inputs moved
        for node in list(model.graph):
            if node.op_type not in _LINEAR or not node.outputs or node.outputs[0].name not in targets:
                continue
            declined = _unsupported(node)
            if declined:
                if self._wanted(node, targets, upstream_changed):
                    log.decline(declined)
                continue
            if not self._wanted(node, targets, upstream_changed):
                continue
            upstream_changed |= self._refit(log, model, node, reference[node.outputs[0].name], names)

    def _wanted(self, node: ir.Node, targets: dict[str, ir.Node], upstream_changed: bool) -> bool:
        """``all``; or ``changed``: its inputs lost features, or an earlier layer was refit (so its inputs moved)."""
        if self.config.layers == "all" or upstream_changed or node.meta.get(INPUTS_PRUNED):
            return True
        then = targets[node.outputs[0].name]
        if then.op_type not in _LINEAR:
            return False
        before = constant_array(then.inputs[1])
        now = constant_array(node.inputs[1])
        if before is None or now is None:
            return False
        in_axis = 1 if node.op_type == "Conv" else (1 if node.op_type == "Gemm" and attribute(node, "transB", 0) else 0)
        return before.shape[in_axis] != now.shape[in_axis]

    def _refit(
        self, log: PassLog, model: ir.Model, node: ir.Node, reference: _ReferenceRows, names: NameSource
    ) -> bool:
        """Refit ``node`` to the original's outputs ``reference`` on the current model's inputs; whether it was."""
        context = self.require_context()
        x_name = node.inputs[0].name
        weight = constant_array(node.inputs[1])
        assert weight is not None
        # a Gemm/MatMul whose rows are not batch-first (a time-major [T, N, C] input, or [T, C] at a fixed batch
        # of 1) has no axis 0 to count samples on: its rows come one sample at a time, like the reference's, so
        # they pair with the same sample's targets
        per_sample = not reference.batch_first
        current = context.activations(model, [x_name], self.config.samples, batch_size=1 if per_sample else 32)
        kept = node.meta.get(KEPT_OUTPUTS)  # this layer lost output channels too: compare only the kept ones
        gram = cross = None
        y_square = 0.0
        rows = 0
        done = 0  # images consumed so far: the reference rows are kept per image, in the data's order
        for now in current:
            n = 1 if per_sample else now[x_name].shape[0]
            x, y = reference.rows(node, now[x_name], done, n)
            done += n
            if kept is not None:
                y = y[:, kept]
            x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)  # the bias column
            gram = x.T @ x if gram is None else gram + x.T @ x
            cross = x.T @ y if cross is None else cross + x.T @ y
            y_square += float((y * y).sum())
            rows += x.shape[0]
        if gram is None or cross is None:
            log.skip(node.name or node.op_type, "no calibration data")
            return False
        fit_bias = node.op_type != "MatMul"
        if not fit_bias:
            gram, cross = gram[:-1, :-1], cross[:-1]
        old = _as_matrix(node, weight, _bias(node, weight), fit_bias)
        d = gram.shape[0]
        lam = self.config.ridge * float(np.trace(gram)) / d
        new = np.linalg.solve(gram + lam * np.eye(d), cross)
        error = lambda w: np.sqrt(max(float(np.sum(w * (gram @ w)) - 2 * np.sum(w * cross)) + y_square, 0.0))  # noqa: E731
        scale = np.sqrt(y_square) or 1.0
        before, after = error(old) / scale, error(new) / scale
        better = after < before
        log.detail(
            layer=node.name or node.op_type,
            rows=rows,
            error_before=before,
            error_after=after,
            status="refit" if better else "kept (the refit was no better)",
        )
        if better:
            _write(node, new, weight, fit_bias, names)
            log.count("layers refit")
            return True
        return False


def _unsupported(node: ir.Node) -> Decline | None:
    """Why ``node`` (a Conv, Gemm or MatMul) cannot be refit, or None."""
    where = node.name or node.op_type
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return Decline(where, "its weight is not a float constant")
    if node.inputs[1] is None or len(node.inputs[1].uses()) != 1:
        return Decline(where, "its weight is shared")
    if node.op_type == "Conv":
        if weight.ndim != 4 or attribute(node, "group", 1) != 1:
            return Decline(where, "only 2-D, ungrouped Conv is refit")
        if attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return Decline(where, "auto_pad is not supported; explicit pads only")
    if node.op_type == "Gemm" and scaled_gemm(node):
        return Decline(where, "Gemm with transA or alpha/beta other than 1")
    if node.op_type in ("Gemm", "MatMul") and weight.ndim != 2:
        return Decline(where, "its weight is not a matrix")
    return None


class _ReferenceRows:
    """One layer's least-squares targets, image by image: the original's output at the sampled positions
    (Conv: ``positions`` per image, drawn from a generator seeded like every layer's) or every row (Gemm/MatMul)."""

    def __init__(self) -> None:
        self.picks: list[np.ndarray] = []  # per image: flat output positions (Conv)
        self.targets: list[np.ndarray] = []  # per image: [rows, C_out]
        self.batch_first = True  # one sample's output leads with a batch axis of 1 (Conv: always)

    def add(self, node: ir.Node, y: np.ndarray, positions: int, rng: np.random.Generator) -> None:
        """The targets of ``y``, one sample's output (Gemm/MatMul: every row of it, whatever its batch axis)."""
        if node.op_type != "Conv":
            self.batch_first = self.batch_first and y.shape[0] == 1
            self.targets.append(y.reshape(-1, y.shape[-1]).astype(np.float64))
            return
        for image in y:  # one image at a time, so the draws do not depend on how the data was batched
            oh, ow = image.shape[1:]
            picks = pick_positions(oh, ow, positions, rng)
            self.picks.append(picks)
            self.targets.append(image[:, picks // ow, picks % ow].T.astype(np.float64))

    def rows(self, node: ir.Node, x: np.ndarray, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares rows of images ``start .. start + n`` (whose layer input is ``x``): inputs [P, D] and
        targets [P, C_out]."""
        y = np.concatenate(self.targets[start : start + n])
        if node.op_type != "Conv":
            return x.reshape(-1, x.shape[-1]).astype(np.float64), y
        patches, _ = patches_at(node, x, np.stack(self.picks[start : start + n]))
        return patches, y


def _reference_rows(
    context: PassContext, original: ir.Model, layers: list[ir.Node], samples: int, positions: int
) -> dict[str, _ReferenceRows]:
    """Every candidate layer's targets from ONE pass of the original over the data (one sample at a time, so
    only one sample's tensors are alive), instead of one pass per refit layer."""
    rows = {node.outputs[0].name: _ReferenceRows() for node in layers}
    if not rows:
        return rows
    rngs = {name: np.random.default_rng(context.seed) for name in rows}
    by_name = {node.outputs[0].name: node for node in layers}
    for batch in context.activations(original, list(rows), samples, batch_size=1):
        for name, y in batch.items():
            rows[name].add(by_name[name], y, positions, rngs[name])
    return rows


def _bias(node: ir.Node, weight: np.ndarray) -> np.ndarray | None:
    return constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None


def _as_matrix(node: ir.Node, weight: np.ndarray, bias: np.ndarray | None, with_bias: bool) -> np.ndarray:
    """The layer's parameters as the least-squares unknown ``[D (+1), C_out]``."""
    if node.op_type == "Conv":
        matrix = weight.reshape(weight.shape[0], -1).T
    elif node.op_type == "Gemm" and attribute(node, "transB", 0):
        matrix = weight.T
    else:
        matrix = weight
    matrix = matrix.astype(np.float64)
    if with_bias:
        b = np.zeros(matrix.shape[1]) if bias is None else np.broadcast_to(bias.reshape(-1), (matrix.shape[1],))
        matrix = np.concatenate([matrix, b[None, :]], axis=0)
    return matrix


def _write(node: ir.Node, solution: np.ndarray, weight: np.ndarray, with_bias: bool, names: NameSource) -> None:
    matrix = solution[:-1] if with_bias else solution
    if node.op_type == "Conv":
        new_weight = matrix.T.reshape(weight.shape)
    elif node.op_type == "Gemm" and attribute(node, "transB", 0):
        new_weight = matrix.T
    else:
        new_weight = matrix
    set_constant_input(node, 1, new_weight.astype(weight.dtype), names, "refit")
    if with_bias:
        set_constant_input(node, 2, solution[-1].astype(weight.dtype), names, "refit")
