"""Factor large classifier heads (and, on request, the largest Convs) into two thin layers fitted to data.

A Gemm or MatMul ``Y = X W + b`` with a constant ``K x N`` weight and many
outputs (a recognizer's or classifier's head: ddddocr's is ``1024 x 8210``,
30 % of the model's MACs) is replaced by

    A = (X P) Q + b                      P: K x r, Q: r x N  (r much smaller than K and N)

where ``P Q`` is the rank-``r`` approximation of ``W`` that minimizes the
output error on calibration data, ``||X (W - P Q)||`` (data-aware SVD: with
``X^T X = R^T R``, the truncated SVD of ``R W``; Eckart-Young in the data's
metric). Plain low rank alone flips near ties: on ddddocr's recognizer a rank
of 256 keeps only 95 % of held-out strings. So, by default, each row's
``rescore`` best candidates under ``A`` are scored again with the exact weight
rows (``TopK`` on ``A``, ``Gather`` of those rows of ``W``, one small batched
MatMul) and written back into ``A`` (``ScatterElements``). The output's best
entries are then exact, the tail keeps the low-rank values. Cost per row:
``r (K + N) + rescore * K`` MACs against ``K N``; the exact rows are read from
the weight kept in the file (so the file grows by ``P`` and ``Q``).

Matches: Gemm (``transA`` 0, ``alpha`` = ``beta`` = 1) and MatMul whose weight
(input 1) is a float constant matrix read by this node alone, with at least
``min_outputs`` outputs. Rank: ``rank`` as given, or the smallest of
:data:`RANKS` whose factored layer keeps the exact layer's best entry (argmax
of each row) on at least ``agreement`` of held-back calibration rows -- every
fourth batch of the data is held back from the fit and only scores it. Only
factorizations costing at most ``max_ratio`` of the layer's MACs are tried.
Guarantees: the output keeps its name, shape and type; the share of
held-back rows whose argmax the rewritten layer keeps is measured (as the
graph computes it, not assumed) and recorded (``argmax_kept``), and is at
least ``agreement`` under the auto rank. Declines (named in the record): a
layer no rank within ``max_ratio`` keeps at ``agreement``, a layer without
data or with a constant input, a shared or non-constant weight, Gemm with ``transA``, ``alpha`` or
``beta``. Lossy; the outputs' tail is approximate, so use it where the head's
best entries are what is read (argmax, top-k, CTC greedy decoding). Needs
``--data``: on random inputs the fit matches only noise.

Convs (``convs=N``, off by default): after the heads, the ``N`` largest
ungrouped 2-D Convs by MACs, largest first, are each replaced by a Conv with
``r`` outputs and a 1x1 Conv back (:mod:`onnxopt.passes._low_rank_conv`:
the same data-aware SVD on the Conv's input patches). A Conv feeds the rest
of the network, so its rank is judged on the whole model: the smallest
multiple of 8 (bisection; costing at most ``conv_max_ratio`` of the Conv's
MACs) whose model -- with every head and Conv factored so far -- leaves at
least ``conv_agreement`` of the held-back samples unchanged, every row of
every output keeping its top-1 along the last axis (a recognizer's whole
string, a classifier's class), against the model this pass received.
Measured, recorded (``top1_kept``), or the Conv is declined by name with the
agreement its largest rank reached. Grouped and depthwise Convs, shared or
non-constant weights and ``auto_pad`` are declined by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxopt.passes._config import validate_literals
from onnxopt.passes._graph_edit import (
    NameSource,
    add_initializer,
    attribute,
    constant_array,
    remove_node_and_orphans,
    subgraph_reads,
)
from onnxopt.passes._im2col import sampled_patches
from onnxopt.passes._low_rank_conv import ConvFactors, conv_macs_ratio, conv_ranks, conv_unsupported, rewrite_conv
from onnxopt.passes._weights import scaled_gemm
from onnxopt.passes.base import Decline, OptPass, PassLog

#: The ranks ``rank=0`` (auto) tries, smallest first.
RANKS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: Every ``HOLD_EVERY``-th batch of calibration data scores the fit instead of feeding it.
HOLD_EVERY = 4
#: Input patches per image a Conv's Gram matrix is accumulated from.
CONV_POSITIONS = 256
#: Samples a batch when heads are fitted (a model with a fixed batch is read a whole batch at a time).
FIT_BATCH = 4
#: Held-back rows kept for scoring (memory bound: rows x K floats).
MAX_CHECK_ROWS = 8192
#: Why a layer whose input or output a subgraph reads is left alone.
_READ_BY_SUBGRAPH = "a subgraph reads its input or output (lossy passes leave those tensors alone)"


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    rank: int = dataclasses.field(
        default=0, metadata={"help": "0: the smallest of RANKS that keeps `agreement` of held-back rows' argmax"}
    )
    rescore: int = dataclasses.field(
        default=16, metadata={"help": "best candidates per row scored again with the exact weights (0: plain low rank)"}
    )
    agreement: float = dataclasses.field(
        default=0.9999, metadata={"help": "fraction of held-back rows whose argmax the factored layer must keep"}
    )
    min_outputs: int = dataclasses.field(
        default=1024, metadata={"help": "only layers with at least this many outputs (large heads)"}
    )
    max_ratio: float = dataclasses.field(
        default=0.5, metadata={"help": "only factorizations costing at most this fraction of the layer's MACs"}
    )
    samples: int = dataclasses.field(default=512, metadata={"help": "calibration samples read"})
    ridge: float = dataclasses.field(
        default=1e-6, metadata={"help": "added to X^T X, relative to its mean diagonal (keeps the Cholesky defined)"}
    )
    convs: int = dataclasses.field(
        default=0, metadata={"help": "also factor up to this many of the largest Convs (by MACs), largest first"}
    )
    conv_agreement: float = dataclasses.field(
        default=0.98, metadata={"help": "share of held-back samples whose every top-1 the factored Convs must keep"}
    )
    conv_max_ratio: float = dataclasses.field(
        default=0.75, metadata={"help": "only Conv factorizations costing at most this fraction of the Conv's MACs"}
    )

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.rank < 0 or self.rescore < 0:
            raise ValueError("rank and rescore must be 0 or more")
        if not 0.0 < self.agreement <= 1.0:
            raise ValueError("agreement must be in (0, 1]")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError("max_ratio must be in (0, 1)")
        if self.convs < 0 or not 0.0 < self.conv_agreement <= 1.0 or not 0.0 < self.conv_max_ratio < 1.0:
            raise ValueError("convs must be 0 or more, conv_agreement in (0, 1] and conv_max_ratio in (0, 1)")
        if self.samples < 2 * HOLD_EVERY or self.min_outputs < 1 or self.ridge < 0:
            raise ValueError(f"samples must be at least {2 * HOLD_EVERY}; min_outputs positive; ridge 0 or more")


class LowRankPass(OptPass):
    """Data-aware low-rank factorization of large Gemm/MatMul heads, best candidates rescored exactly."""

    name = "low-rank"
    Config = LowRankConfig
    lossless = False
    learns_from_data = True

    def required_opset(self, model: ir.Model) -> int | None:
        """13 (Squeeze/Unsqueeze take their axes as inputs) where a head is large enough to factor."""
        return 13 if any(self._candidate(n) is not None for n in model.graph) else None

    def _candidate(self, node: ir.Node) -> np.ndarray | None:
        """The ``K x N`` weight of a Gemm/MatMul with at least ``min_outputs`` outputs; None for other nodes."""
        if node.op_type not in ("Gemm", "MatMul") or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            return None
        shape = node.inputs[1].shape if node.inputs[1] is not None else None
        if shape is not None and len(shape) == 2 and all(isinstance(d, int) for d in shape):
            outputs = shape[0] if node.op_type == "Gemm" and attribute(node, "transB", 0) else shape[1]
            if outputs < self.config.min_outputs:
                return None  # known too small: no need to read the weight
        weight = _weight_kn(node)
        return weight if weight is not None and weight.shape[1] >= self.config.min_outputs else None

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        context = self.require_context()
        if context.real_samples() == 0:
            log.note("no --data: the factorization is fitted to random inputs and may not hold on real ones")
        names = NameSource(model)
        inside = subgraph_reads(model.graph)
        reference = self._top1(model) if self.config.convs else None  # before any layer is factored
        self._factor_heads(model, log, names, inside)
        if reference is not None:
            self._factor_convs(model, log, names, inside, reference)
        elif self.config.convs:
            log.skip("convs", "no output has a last axis to take a top-1 over (nothing to judge Convs by)")

    def _factor_heads(self, model: ir.Model, log: PassLog, names: NameSource, inside: set[int]) -> None:
        for node in list(model.graph):
            weight = self._candidate(node)
            if weight is None:
                continue
            where = node.name or node.op_type
            declined = _unsupported(node, weight)
            if declined is None and {id(node.inputs[0]), id(node.outputs[0])} & inside:
                declined = Decline(where, _READ_BY_SUBGRAPH)
            if declined:
                log.decline(declined)
                continue
            k, n = weight.shape
            fit = self._fit(model, node, weight)
            if fit is None:
                log.skip(where, "no finite calibration data reached it")
                continue
            bias = _bias(node, n)
            try:
                choice = self._choose(fit, weight, bias)
            except np.linalg.LinAlgError as error:
                log.skip(where, f"its inputs' Gram matrix cannot be factored ({error}); raise ridge")
                continue
            if choice is None:
                log.skip(where, f"no rank within {self.config.max_ratio:.0%} of its MACs keeps "
                                f"{self.config.agreement:.2%} of held-back rows' argmax")  # fmt: skip
                continue
            rank, kept, p, q = choice
            cost = (rank * (k + n) + self.config.rescore * k) / (k * n)
            log.detail(layer=where, rank=rank, rescore=self.config.rescore, macs_ratio=round(cost, 4),
                       argmax_kept=round(kept, 5), held_back_rows=len(fit.check_x))  # fmt: skip
            _rewrite(model.graph, node, weight, bias, p, q, self.config.rescore, names)
            log.count("layers factored")

    def _factor_convs(
        self, model: ir.Model, log: PassLog, names: NameSource, inside: set[int], reference: list[np.ndarray]
    ) -> None:
        """Factor the ``convs`` largest Convs in turn, each at the smallest rank whose model -- with every Conv
        and head factored so far -- keeps ``conv_agreement`` of the held-back samples unchanged (every top-1)."""
        cfg = self.config
        candidates = []
        for node in model.graph:
            if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
                continue
            where = node.name or node.op_type
            declined = conv_unsupported(node)
            if declined is None and {id(node.inputs[0]), id(node.outputs[0])} & inside:
                declined = Decline(where, _READ_BY_SUBGRAPH)
            if declined is None and not conv_ranks(constant_array(node.inputs[1]), cfg.conv_max_ratio):
                declined = Decline(where, f"no rank costs at most {cfg.conv_max_ratio:.0%} of its MACs")
            if declined:
                log.decline(declined)
            else:
                candidates.append(node)
        if not candidates:
            return
        sizes = next(self.require_context().activations(model, [n.outputs[0].name for n in candidates], 1,
                                                        batch_size=1))  # fmt: skip
        order = list(model.graph)
        macs = {id(n): sizes[n.outputs[0].name][0].size * constant_array(n.inputs[1])[0].size for n in candidates}
        candidates.sort(key=lambda n: (-macs[id(n)], order.index(n)))
        for node in candidates[: cfg.convs]:
            self._factor_conv(model, log, names, node, reference)

    def _factor_conv(
        self, model: ir.Model, log: PassLog, names: NameSource, node: ir.Node, reference: list[np.ndarray]
    ) -> None:
        """Factor one Conv at the smallest rank that keeps ``conv_agreement`` (bisection over its ranks)."""
        cfg = self.config
        where = node.name or "Conv"
        weight = constant_array(node.inputs[1])
        gram = self._conv_gram(model, node)
        if gram is None:
            log.skip(where, "no finite calibration data reached it")
            return
        try:
            factors = ConvFactors(weight, gram, cfg.ridge)
        except np.linalg.LinAlgError as error:
            log.skip(where, f"its patches' Gram matrix cannot be factored ({error}); raise ridge")
            return
        position = list(model.graph).index(node)
        kept: dict[int, float] = {}

        def keeps(rank: int) -> bool:
            if rank not in kept:
                trial = model.clone()
                rewrite_conv(trial.graph, list(trial.graph)[position], *factors.at(rank), NameSource(trial))
                top1 = self._top1(trial) or []
                kept[rank] = float(np.mean([np.array_equal(a, b) for a, b in zip(top1, reference, strict=True)]))
            return kept[rank] >= cfg.conv_agreement

        ranks = conv_ranks(weight, cfg.conv_max_ratio)
        rank = _smallest(ranks, keeps)
        if rank is None:
            log.skip(where, f"no rank within {cfg.conv_max_ratio:.0%} of its MACs keeps {cfg.conv_agreement:.2%} of "
                            f"held-back samples unchanged ({kept[ranks[-1]]:.4f} at rank {ranks[-1]})")  # fmt: skip
            return
        rewrite_conv(model.graph, node, *factors.at(rank), names)
        log.detail(layer=where, rank=rank, of=int(weight.shape[0]), top1_kept=round(kept[rank], 5),
                   macs_ratio=round(conv_macs_ratio(weight, rank), 4), held_back_samples=len(reference))  # fmt: skip
        log.count("convs factored")

    def _conv_gram(self, model: ir.Model, node: ir.Node) -> np.ndarray | None:
        """``X^T X`` of the Conv's input patches (:data:`CONV_POSITIONS` per image) over the fitting batches."""
        x_name = node.inputs[0].name
        rng = np.random.default_rng(self.require_context().seed)
        gram: np.ndarray | None = None
        per = _samples_per_fit_batch(model)
        fitting = self.require_context().activations(model, [x_name], self.config.samples, batch_size=1,
                                                     keep=lambda i: not _held_back(i // per))  # fmt: skip
        for batch in fitting:
            rows, _ = sampled_patches(node, batch[x_name], CONV_POSITIONS, rng)
            gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        return gram if gram is not None and np.isfinite(gram).all() else None

    def _top1(self, model: ir.Model) -> list[np.ndarray] | None:
        """Per held-back sample, the top-1 along the last axis of every row of every float output with a last
        axis of 2 or more (one sample a batch, so a sequence's rows stay together; the same samples for every
        model: the data are read in order)."""
        outputs = [v.name for v in model.graph.outputs if v.dtype == ir.DataType.FLOAT and v.name]
        samples: list[np.ndarray] = []
        per = _samples_per_fit_batch(model)
        held = self.require_context().activations(model, outputs, self.config.samples, batch_size=1,
                                                  keep=lambda i: _held_back(i // per))  # fmt: skip
        for batch in held:
            rows = [
                y.reshape(-1, y.shape[-1]).argmax(axis=1) for y in batch.values() if y.ndim >= 2 and y.shape[-1] >= 2
            ]
            if rows:
                samples.append(np.concatenate(rows))
        return samples or None

    def _fit(self, model: ir.Model, node: ir.Node, weight: np.ndarray) -> _Fit | None:
        """``X^T X`` over the fitting batches and the held-back batches' rows of ``node``'s input."""
        x_name = node.inputs[0].name
        gram: np.ndarray | None = None
        check: list[np.ndarray] = []
        held = 0
        batches = self.require_context().activations(model, [x_name], self.config.samples, batch_size=FIT_BATCH)
        for i, batch in enumerate(batches):
            rows = batch[x_name].reshape(-1, weight.shape[0]).astype(np.float64)
            if _held_back(i):
                if held < MAX_CHECK_ROWS:
                    check.append(rows[: MAX_CHECK_ROWS - held].astype(np.float32))
                    held += len(check[-1])
                continue
            gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        if gram is None or not check or not np.isfinite(gram).all():
            return None
        return _Fit(gram, np.concatenate(check))

    def _choose(
        self, fit: _Fit, weight: np.ndarray, bias: np.ndarray | None
    ) -> tuple[int, float, np.ndarray, np.ndarray] | None:
        """(rank, argmax kept on held-back rows, P, Q) of the smallest rank that keeps ``agreement``."""
        k, n = weight.shape
        d = fit.gram.shape[0]
        lam = self.config.ridge * float(np.trace(fit.gram)) / d
        upper = np.linalg.cholesky(fit.gram + lam * np.eye(d)).T  # X^T X = R^T R
        u, s, vt = np.linalg.svd(upper @ weight.astype(np.float64), full_matrices=False)
        offset = 0 if bias is None else bias
        truth = np.concatenate([(x @ weight + offset).argmax(axis=1) for x in _chunks(fit.check_x)])
        budget = self.config.max_ratio * k * n - self.config.rescore * k
        ranks = [self.config.rank] if self.config.rank else [r for r in RANKS if r < min(k, n)]
        for rank in ranks:
            if rank * (k + n) > budget:
                break
            p = np.linalg.solve(upper, u[:, :rank] * s[:rank]).astype(np.float32)
            q = vt[:rank].astype(np.float32)
            scored = [_scored(x, p, q, weight, bias, self.config.rescore) for x in _chunks(fit.check_x)]
            kept = float(np.mean(np.concatenate(scored) == truth))
            if kept >= self.config.agreement or self.config.rank:
                return rank, kept, p, q
        return None


@dataclasses.dataclass(frozen=True)
class _Fit:
    gram: np.ndarray  # [K, K] float64, fitting rows
    check_x: np.ndarray  # [rows, K] float32, held-back rows


def _held_back(batch: int) -> bool:
    """Whether calibration batch ``batch`` (of :data:`FIT_BATCH` samples) scores fits instead of feeding them."""
    return batch % HOLD_EVERY == HOLD_EVERY - 1


def _samples_per_fit_batch(model: ir.Model) -> int:
    """How many of the one-sample batches the Conv path reads make one of the heads' fitting batches: the
    same samples are held back for both (a model with a fixed batch is read a whole batch at a time either way)."""
    data = [v for v in model.graph.inputs if v.name not in model.graph.initializers and v.shape is not None]
    fixed = any(len(v.shape) > 0 and isinstance(v.shape[0], int) and v.shape[0] > 0 for v in data)
    return 1 if fixed else FIT_BATCH


def _smallest(ranks: list[int], keeps: Callable[[int], bool]) -> int | None:
    """The smallest of ``ranks`` that ``keeps`` accepts, by bisection (agreement rises with the rank); the
    largest is tried first, so a layer no rank can factor costs one trial."""
    if not keeps(ranks[-1]):
        return None
    low, high = 0, len(ranks) - 1  # ranks[high] is kept
    while low < high:
        middle = (low + high) // 2
        if keeps(ranks[middle]):
            high = middle
        else:
            low = middle + 1
    return ranks[high]


def _chunks(rows: np.ndarray, size: int = 512) -> list[np.ndarray]:
    """``rows`` in slices: scoring holds ``size x N`` scores and ``size x rescore x K`` weight rows at a time."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _scored(
    x: np.ndarray, p: np.ndarray, q: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, rescore: int
) -> np.ndarray:
    """Each row's argmax under the factored layer, as the rewritten graph computes it."""
    approx = (x @ p) @ q + (0 if bias is None else bias)
    if rescore:
        top = np.argpartition(-approx, rescore - 1, axis=1)[:, :rescore]
        exact = np.einsum("rk,rck->rc", x, weight.T[top]) + (0 if bias is None else bias[top])
        np.put_along_axis(approx, top, exact, axis=1)
    return approx.argmax(axis=1)


def _weight_kn(node: ir.Node) -> np.ndarray | None:
    """The layer's weight as ``K x N`` (inputs x outputs), or None if input 1 is not a constant matrix."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    weight = constant_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    return weight.T if node.op_type == "Gemm" and attribute(node, "transB", 0) else weight


def _bias(node: ir.Node, n: int) -> np.ndarray | None:
    """Gemm's ``C`` as an ``N`` vector (None without one)."""
    if node.op_type != "Gemm" or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    c = constant_array(node.inputs[2])
    return None if c is None else np.broadcast_to(c.astype(np.float32).reshape(-1), (n,))


def _unsupported(node: ir.Node, weight: np.ndarray) -> Decline | None:
    """Why the Gemm or MatMul head ``node`` cannot be factored, or None."""
    where = node.name or node.op_type
    if node.inputs[0] is None or constant_array(node.inputs[0]) is not None:
        return Decline(where, "its input is a constant (nothing to fit on data)")
    if weight.dtype != np.float32 or not np.isfinite(weight).all():
        return Decline(where, "its weight is not a finite float32 constant")
    if len(node.inputs[1].uses()) != 1:
        return Decline(where, "its weight is shared")
    if node.op_type == "Gemm":
        if scaled_gemm(node):
            return Decline(where, "Gemm with transA or alpha/beta other than 1")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = constant_array(node.inputs[2])
            if c is None or c.size not in (1, weight.shape[1]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                return Decline(where, "its bias is not a constant vector over the outputs")
    return None


def _rewrite(
    graph: ir.Graph,
    node: ir.Node,
    weight: np.ndarray,
    bias: np.ndarray | None,
    p: np.ndarray,
    q: np.ndarray,
    rescore: int,
    names: NameSource,
) -> None:
    """Replace ``node`` by ``(X P) Q + b`` and, with ``rescore``, the exact scores of each row's best candidates."""
    base = node.name or "linear"
    x, old = node.inputs[0], node.outputs[0]
    made: list[ir.Node] = []

    def op(op_type: str, inputs: list[ir.Value], what: str, **attributes: object) -> ir.Value:
        made.append(ir.node(op_type, inputs, attributes=attributes, name=names.fresh(f"{base}_{what}")))
        out = made[-1].outputs[0]
        out.name, out.dtype = names.fresh(f"{base}_{what}"), ir.DataType.FLOAT
        return out

    def const(what: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, names.fresh(f"{base}_{what}"), array)

    thin = op("MatMul", [x, const("p", p)], "thin")
    scores = op("MatMul", [thin, const("q", q)], "lowrank")
    b_value = const("b", bias.astype(np.float32)) if bias is not None else None
    if b_value is not None:
        scores = op("Add", [scores, b_value], "approx")
    if rescore:
        top = ir.node("TopK", [scores, const("k", np.array([rescore], np.int64))], attributes={"axis": -1},
                      name=names.fresh(f"{base}_topk"), num_outputs=2)  # fmt: skip
        made.append(top)
        top.outputs[0].name = names.fresh(f"{base}_topv")
        indices = top.outputs[1]
        indices.name, indices.dtype = names.fresh(f"{base}_topi"), ir.DataType.INT64
        rows_nk = node.inputs[1] if node.op_type == "Gemm" and attribute(node, "transB", 0) else None
        rows_value = rows_nk if rows_nk is not None else const("rows", np.ascontiguousarray(weight.T))
        rows = op("Gather", [rows_value, indices], "rows", axis=0)  # [..., c, K]
        column = op("Unsqueeze", [x, const("last", np.array([-1], np.int64))], "column")  # [..., K, 1]
        exact = op("Squeeze", [op("MatMul", [rows, column], "exact1"), const("last1", np.array([-1], np.int64))],
                   "exact")  # fmt: skip
        if b_value is not None:
            exact = op("Add", [exact, op("Gather", [b_value, indices], "topb", axis=0)], "exactb")
        scores = op("ScatterElements", [scores, indices, exact], "rescored", axis=-1)
    graph.insert_after(node, made)
    name = old.name
    ir.convenience.replace_all_uses_with(old, scores, replace_graph_outputs=True)
    old.name = None
    scores.name = name  # the same tensor, approximated: names keep their meaning through onnxopt's passes
    scores.shape = old.shape
    remove_node_and_orphans(graph, node)
