"""Remove whole output channels of Conv/ConvTranspose/Gemm/MatMul, and their traces downstream.

The channel dependency analysis (:mod:`onnxopt.passes._channel_groups`) finds
*groups*: sources whose channels must go together (residual Add/Mul couple
them), every edit removing channels needs (sources' weight rows and biases,
BatchNormalization and per-channel constants, depthwise filters and their
``group``, consumers' input slices -- through Concat offsets, Transpose and
flattening into Gemm/MatMul), and the groups that must stay whole, with the
reason (graph outputs, tensors read inside If/Loop/Scan bodies, Split/Slice,
grouped convolutions over concatenated channels, unknown ops). Groups read or written by grouped convolutions lose the
same number of channels in each of their G blocks.

For every prunable group, ``ratio`` of its channels (rounded down; at least
``min_channels`` stay, and with ``multiple=k`` the kept count is rounded up to
a multiple of k) with the lowest importance are removed:

* ``l1`` / ``l2``: the norm of each channel's filter in every source, each
  source's norms divided by their maximum so coupled sources count alike;
* ``bn``: ``|gamma| / sqrt(var + eps)`` of the BatchNormalization right after a
  source (the channel's scale after normalization), falling back to ``l1``;
* ``activation``: the mean ``|output|`` of each channel of every source on the
  run's data (``samples`` samples, through the pipeline's Context);
* ``thinet``: greedy next-layer reconstruction error (ThiNet, Luo et al. 2017):
  channels are removed one at a time, each time the one whose removal changes
  the consumers' outputs least together with those already removed, measured
  on the run's data at ``positions`` sampled output positions per image. The
  error of a removed set ``R`` is ``sum_{c,d in R} G[c, d]`` with ``G`` the Gram
  matrix of the channels' contributions to the consumers' outputs, exact
  without materializing them: ``G = sum_{k,l} (X^T X)[ck, dl] (W^T W)[ck, dl]``
  over kernel offsets. Consumers are ungrouped Convs and Gemm/MatMul reading
  the channels directly; a group with none falls back to ``l1``.

Sources matching ``exclude`` (a regex on node names) keep their groups whole.

``max_drop=d``: ``ratio`` becomes the most the pass may remove; the ratio used
is the largest (bisection over ``budget_steps`` trials on copies) whose pruned
model -- refit by ``reconstruct`` first, with ``refit=true``, as the ``prune``
recipe will -- stays within ``d`` of the original on ``eval_samples`` samples
(:mod:`onnxopt.optimizer.quality`: accuracy with labels, else top-1 or output agreement).
The record lists every trial; no ratio within the budget declines the pass.
Graph outputs never change shape. Lossy (the accuracy cost is measured by the
pipeline; ``reconstruct`` recovers much of it); the record lists each group
with its sources, channels before and after, or why it was kept, and counts
the model's multiply-accumulates per sample before and after.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.model_stats import estimate_macs
from onnxopt.passes._channel_groups import ChannelGroups, Edit, Layout
from onnxopt.passes._config import validate_literals
from onnxopt.passes._graph_edit import NameSource, attribute, constant_array, name_unnamed_nodes, set_constant_input
from onnxopt.passes._im2col import sampled_patches
from onnxopt.passes._weights import check_pattern
from onnxopt.passes.base import INPUTS_PRUNED, KEPT_OUTPUTS, OptPass, PassLog
from onnxopt.passes.reconstruct import ReconstructPass
from onnxopt.shapes import annotate_shapes

Importance = Literal["l1", "l2", "bn", "activation", "thinet"]
IMPORTANCES: tuple[str, ...] = typing.get_args(Importance)


@dataclasses.dataclass(frozen=True)
class PruneChannelsConfig:
    ratio: float = dataclasses.field(default=0.3, metadata={"help": "of each prunable group's channels removed"})
    # l2 held accuracy best on the digits CNN, held out (tools/bench_prune_importance.py)
    importance: Importance = dataclasses.field(default="l2", metadata={"help": "how channels are ranked"})
    min_channels: int = dataclasses.field(
        default=1, metadata={"help": "channels every group keeps at least (per block of a grouped convolution)"}
    )
    multiple: int = dataclasses.field(
        default=1, metadata={"help": "the kept channel count is rounded up to a multiple of this"}
    )
    exclude: str = dataclasses.field(
        default="", metadata={"help": "regex on node names: matching sources keep their groups whole; empty: none"}
    )
    samples: int = dataclasses.field(
        default=256, metadata={"help": "calibration samples for importance=activation/thinet"}
    )
    positions: int = dataclasses.field(
        default=8, metadata={"help": "sampled output positions per image for importance=thinet"}
    )
    max_drop: float | None = dataclasses.field(
        default=None, metadata={"help": "accuracy budget: the largest ratio up to `ratio` within it"}
    )
    refit: bool = dataclasses.field(
        default=True,
        metadata={"help": "the budget judges each trial after reconstruct (as the prune recipe runs it)"},
    )
    budget_steps: int = dataclasses.field(default=5, metadata={"help": "trials of the bisection over the ratio"})
    eval_samples: int = dataclasses.field(
        default=256, metadata={"help": "samples each budget trial is scored on against the original"}
    )
    # nothing can refit or fine-tune what pruning removed, so prune less
    without_data_ratio: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "the ratio pruned instead with fewer than min_samples samples of real data "
            "(random inputs count as none)"
        },
    )
    min_samples: int = dataclasses.field(
        default=256, metadata={"help": "samples of real data below which without_data_ratio applies"}
    )

    def __post_init__(self) -> None:
        validate_literals(self)
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), not {self.ratio}")
        if self.min_channels < 1 or self.multiple < 1 or self.samples < 1 or self.positions < 1:
            raise ValueError("min_channels, multiple, samples and positions must be at least 1")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError("max_drop must be in [0, 1)")
        if self.without_data_ratio is not None and not 0 <= self.without_data_ratio < 1:
            raise ValueError(f"without_data_ratio must be in [0, 1), not {self.without_data_ratio}")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.budget_steps < 1 or self.eval_samples < 1:
            raise ValueError("budget_steps and eval_samples must be at least 1")
        check_pattern(self.exclude)


class PruneChannelsPass(OptPass):
    """Remove the least important output channels of Conv/Gemm/MatMul groups and every slice that depends on them."""

    name = "prune-channels"
    min_opset = 9  # Reshape targets and Slice/Gather forms it rewrites
    Config = PruneChannelsConfig
    lossless = False
    learns_from_data = True

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        ratio = self._ratio(log)
        if ratio == 0:
            return
        name_unnamed_nodes(model, NameSource(model))  # groups are labelled by their sources' names
        groups = ChannelGroups(model.graph)
        self._activity = self._mean_activity(model, groups) if self.config.importance == "activation" else {}
        thinet = self._thinet_order(model, groups) if self.config.importance == "thinet" else {}
        scores = {  # by group label: the same groups are found again in the copies the budget search prunes
            _label(groups.sources[root]): thinet.get(root)
            if root in thinet
            else self._importance(groups.sources[root], groups.channels[root])
            for root in groups.roots()
            if root not in groups.frozen
        }
        if self.config.max_drop is not None:
            ratio = self._fit_budget(log, model, scores, ratio)
            if ratio is None:
                return
        self._prune(log, model, ratio, scores)

    def _ratio(self, log: PassLog) -> float:
        """``ratio``, or ``without_data_ratio`` when the run has too little real data to recover from it."""
        cfg = self.config
        if cfg.without_data_ratio is None or self.context is None:
            return cfg.ratio
        samples = self.context.real_samples()
        if samples >= cfg.min_samples:
            return cfg.ratio
        have = "no --data" if samples == 0 else f"{samples} samples of --data"
        log.note(
            f"{have} (refitting and fine-tuning want at least {cfg.min_samples}): pruning "
            f"{cfg.without_data_ratio:g} of the channels instead of {cfg.ratio:g}"
        )
        return min(cfg.ratio, cfg.without_data_ratio)

    def _prune(self, log: PassLog, model: ir.Model, ratio: float, scores: dict[str, np.ndarray]) -> None:
        groups = ChannelGroups(model.graph)
        kept = self._decide(log, groups, ratio, scores)
        if not kept:
            return
        macs_before, _ = estimate_macs(model)
        names = NameSource(model)
        touched: set[int] = set()
        for edit in groups.edits:
            index = _indices(edit.layout, groups, kept)
            if index is not None and _apply(edit, index, names):
                touched.add(id(edit.node))
        for node in model.graph:  # channel counts changed on the traced tensors: infer their shapes again below
            for out in node.outputs:
                if not out.is_graph_output() and (id(node) in touched or id(out) in groups.layouts):
                    out.shape = None
        ir.passes.common.RemoveUnusedNodesPass()(model)  # e.g. the shape arithmetic of a replaced Reshape target
        annotate_shapes(model)
        macs_after, unknown = estimate_macs(model)
        log.count("MACs per sample before", macs_before)
        log.count("MACs per sample after", macs_after)
        if unknown:  # e.g. an LSTM behind a Reshape to the input's symbolic width: `onnxopt inspect` runs them
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            log.note(f"the MAC counts leave out {shown} (shapes unknown before running the model)")

    def _fit_budget(self, log: PassLog, model: ir.Model, scores: dict[str, np.ndarray], upper: float) -> float | None:
        """The largest ratio up to ``upper`` (bisection, ``budget_steps`` trials) whose pruned -- and, with
        ``refit``, reconstructed -- copy stays within ``max_drop`` of the original (onnxopt.optimizer.quality)."""
        context = self.require_context()
        assert self.config.max_drop is not None
        budget = context.budget(self.config.max_drop, self.config.eval_samples)

        def drop_at(ratio: float) -> float:
            trial = model.clone()
            self._prune(PassLog(), trial, ratio, scores)  # a trial's record is thrown away
            if self.config.refit:
                refit = ReconstructPass()
                with refit.bound(context):
                    refit(trial)
            drop = budget.drop(trial)
            log.detail(trial_ratio=round(ratio, 4), metric=budget.metric, drop=round(drop, 4))
            return drop

        best = budget.largest(drop_at, upper, self.config.budget_steps)
        if best is None:
            smallest = upper / 2 ** (self.config.budget_steps - 1)
            log.skip(
                "model", f"no ratio down to {smallest:.3g} keeps the {budget.metric} drop within {budget.max_drop}"
            )
            return None
        how = " after reconstruct" if self.config.refit else ""
        log.note(
            f"max_drop={budget.max_drop}: ratio {best:.3g} ({budget.metric}{how}, {budget.baseline:.4f} originally)"
        )
        return best

    def _decide(
        self, log: PassLog, groups: ChannelGroups, ratio: float, scores: dict[str, np.ndarray]
    ) -> dict[int, np.ndarray]:
        cfg = self.config
        exclude = re.compile(cfg.exclude) if cfg.exclude else None
        kept: dict[int, np.ndarray] = {}
        for root in groups.roots():
            sources = groups.sources[root]
            label = _label(sources)
            channels = groups.channels[root]
            reason = groups.frozen.get(root)
            if reason is None and exclude and any(exclude.search(n.name or "") for n in sources):
                reason = "excluded by name"
            blocks = groups.blocks.get(root, 1)
            if reason is None and channels % blocks:
                reason = f"{channels} channels do not split into the {blocks} groups of its grouped convolutions"
            per = channels // blocks if not channels % blocks else channels
            keep_block = max(per - int(np.floor(ratio * per)), min(-(-cfg.min_channels // blocks), per))
            step = cfg.multiple // math.gcd(cfg.multiple, blocks)  # the total must stay a multiple of `multiple`
            keep_block = min(per, -(-keep_block // step) * step)
            keep = keep_block * blocks if not channels % blocks else channels
            if reason is None and keep == channels:
                reason = f"ratio {ratio:.3g} removes no channel of {channels}"
            if reason is None and (label not in scores or scores[label].shape != (channels,)):
                reason = "no importance scores (the group changed)"
            if reason is not None:
                log.skip(label, reason)
                log.detail(group=label, channels_before=channels, channels_after=channels, status=reason)
                continue
            score = scores[label]
            kept[root] = np.concatenate(  # the best keep_block channels of every block (one block unless grouped)
                [b * per + np.sort(np.argsort(-score[b * per : (b + 1) * per], kind="stable")[:keep_block])
                 for b in range(blocks)]
            )  # fmt: skip
            log.detail(group=label, channels_before=channels, channels_after=keep, status="pruned")
            log.count("groups pruned")
            log.count("channels removed", channels - keep)
        return kept

    def _mean_activity(self, model: ir.Model, groups: ChannelGroups) -> dict[str, np.ndarray]:
        """Mean |output| per channel of every source, on the calibration data."""
        context = self.require_context()
        sources = [n for root in groups.roots() for n in groups.sources[root] if root not in groups.frozen]
        names = [n.outputs[0].name for n in sources if n.outputs[0].name]
        axes = {n.outputs[0].name: groups.layouts[id(n.outputs[0])].axis for n in sources}
        sums: dict[str, np.ndarray] = {}
        for arrays in context.activations(model, names, self.config.samples):
            for name, array in arrays.items():
                axis = axes[name] % array.ndim
                other = tuple(i for i in range(array.ndim) if i != axis)
                sums[name] = sums.get(name, 0) + np.abs(array.astype(np.float64)).mean(axis=other)
        return sums

    def _thinet_order(self, model: ir.Model, groups: ChannelGroups) -> dict[int, np.ndarray]:
        """Per prunable group: ThiNet's greedy removal order as scores (the first channel removed scores 0)."""
        consumers: dict[int, list[tuple[ir.Node, int, int]]] = {}  # root -> (consumer, offset, size)
        for edit in groups.edits:
            node = edit.node
            if edit.kind != "in" or edit.layout.spread is not None or not _thinet_consumer(node):
                continue
            offset = 0
            for group, size in edit.layout.segments:
                root = groups.find(group) if group is not None else None
                if root is not None and root not in groups.frozen:
                    consumers.setdefault(root, []).append((node, offset, size))
                offset += size
        nodes = {id(n): n for parts in consumers.values() for n, _, _ in parts}
        grams = self._contribution_grams(model, list(nodes.values()))
        order: dict[int, np.ndarray] = {}
        for root, parts in consumers.items():
            total = None
            for node, offset, size in parts:
                gram = grams.get(id(node))
                if gram is None:
                    continue
                block = gram[offset : offset + size, offset : offset + size]
                total = block if total is None else total + block
            if total is not None and total.shape[0] == groups.channels[root]:
                order[root] = _greedy_scores(total)
        return order

    def _contribution_grams(self, model: ir.Model, consumers: list[ir.Node]) -> dict[int, np.ndarray]:
        """For each consumer, G[c, d] = <contribution of input channel c, of d> to its outputs, on the data."""
        context = self.require_context()
        rng = np.random.default_rng(context.seed)
        x_grams: dict[int, np.ndarray] = {}
        for start in range(0, len(consumers), 4):  # a few input tensors per pass over the data bounds memory
            chunk = consumers[start : start + 4]
            names = sorted({n.inputs[0].name for n in chunk if n.inputs[0].name})
            for arrays in context.activations(model, names, self.config.samples):
                for node in chunk:
                    x = arrays[node.inputs[0].name]
                    if node.op_type == "Conv":
                        rows, _ = sampled_patches(node, x, self.config.positions, rng)
                    else:
                        rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
                    gram = rows.T @ rows
                    x_grams[id(node)] = x_grams[id(node)] + gram if id(node) in x_grams else gram
        grams = {}
        for node in consumers:
            if id(node) not in x_grams:
                continue
            weight = constant_array(node.inputs[1])
            assert weight is not None
            if node.op_type == "Conv":
                w = weight.reshape(weight.shape[0], -1).astype(np.float64)  # [O, C*K]
                channels, k = weight.shape[1], int(np.prod(weight.shape[2:]))
            else:
                w = (weight.T if node.op_type == "Gemm" and attribute(node, "transB", 0) else weight).T  # [O, C]
                w = w.astype(np.float64)
                channels, k = w.shape[1], 1
            both = x_grams[id(node)] * (w.T @ w)  # [C*K, C*K], elementwise
            grams[id(node)] = both.reshape(channels, k, channels, k).sum(axis=(1, 3))
        return grams

    def _importance(self, sources: list[ir.Node], channels: int) -> np.ndarray:
        total = np.zeros(channels)
        for node in sources:
            scores = self._bn_scores(node) if self.config.importance == "bn" else None
            if self.config.importance == "activation":
                scores = self._activity.get(node.outputs[0].name)
            if scores is None:
                weight = constant_array(node.inputs[1])
                assert weight is not None
                out_axis = _out_axis(node, weight.ndim)
                rows = np.moveaxis(np.abs(weight.astype(np.float64)), out_axis, 0).reshape(channels, -1)
                scores = rows.sum(axis=1) if self.config.importance != "l2" else np.sqrt((rows * rows).sum(axis=1))
            total += scores / max(float(scores.max()), 1e-30)
        return total

    @staticmethod
    def _bn_scores(node: ir.Node) -> np.ndarray | None:
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0].node.op_type != "BatchNormalization":
            return None
        bn = uses[0].node
        gamma, var = constant_array(bn.inputs[1]), constant_array(bn.inputs[4])
        if gamma is None or var is None:
            return None
        eps = bn.attributes.get_float("epsilon", 1e-5)
        return np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)


def _label(sources: list[ir.Node]) -> str:
    return ", ".join(n.name or n.op_type for n in sources)


def _thinet_consumer(node: ir.Node) -> bool:
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or node.inputs[0] is None:
        return False
    if node.op_type == "Conv":
        pads_explicit = attribute(node, "auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
        return weight.ndim == 4 and attribute(node, "group", 1) == 1 and pads_explicit
    if node.op_type == "Gemm":
        return weight.ndim == 2 and not attribute(node, "transA", 0)
    return node.op_type == "MatMul" and weight.ndim == 2


def _greedy_scores(gram: np.ndarray) -> np.ndarray:
    """ThiNet's greedy order on the contribution Gram matrix: repeatedly remove the channel whose removal, with
    those already removed, changes the outputs least. Scores: 0 for the first removed, then 1, 2, ..."""
    channels = gram.shape[0]
    scores = np.zeros(channels)
    removed = np.zeros(channels, dtype=bool)
    cross = np.zeros(channels)  # sum over removed r of G[c, r]
    diagonal = np.diag(gram).copy()
    for step in range(channels):
        cost = np.where(removed, np.inf, diagonal + 2 * cross)
        pick = int(np.argmin(cost))
        removed[pick] = True
        scores[pick] = step
        cross += gram[:, pick]
    return scores


def _out_axis(node: ir.Node, ndim: int) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0


def _indices(layout: Layout, groups: ChannelGroups, kept: dict[int, np.ndarray]) -> np.ndarray | None:
    """Indices along the layout's channel axis that survive; None when every one does."""
    parts, offset, changed = [], 0, False
    for group, size in layout.segments:
        root = groups.find(group) if group is not None else None
        if root is not None and root in kept:
            parts.append(kept[root] + offset)
            changed = True
        else:
            parts.append(np.arange(size) + offset)
        offset += size
    if not changed:
        return None
    index = np.concatenate(parts)
    if layout.spread is not None:
        index = np.sort(layout.spread[index].reshape(-1))
    return index


def _apply(edit: Edit, index: np.ndarray, names: NameSource) -> bool:
    node = edit.node
    if edit.kind == "reshape":
        set_constant_input(node, 1, np.array([0, -1], dtype=np.int64), names, "flatten")
        return True
    array = constant_array(node.inputs[edit.index])
    if array is None:
        return False
    if edit.kind == "grouped_in":
        return _slice_grouped_inputs(node, array, index, names)
    set_constant_input(node, edit.index, np.take(array, index, axis=edit.axis), names, "pruned")
    if edit.kind == "in":
        node.meta[INPUTS_PRUNED] = True
    if edit.kind in ("out", "depthwise"):
        _slice_bias(node, index, names)
        # Which of the original output channels remain: later passes (reconstruct) compare with the original.
        earlier = node.meta.get(KEPT_OUTPUTS)
        node.meta[KEPT_OUTPUTS] = index if earlier is None else earlier[index]
    if edit.kind == "depthwise":
        node.attributes["group"] = ir.AttrInt64("group", int(index.size))
    return True


def _slice_grouped_inputs(node: ir.Node, weight: np.ndarray, index: np.ndarray, names: NameSource) -> bool:
    """A grouped Conv's weight ``[C_out, C_in / G, ...]`` after its input channels ``index`` (global, sorted) are
    kept: each block of ``C_out / G`` rows keeps the columns of its own group's surviving channels."""
    groups = int(attribute(node, "group", 1))
    columns, rows = weight.shape[1], weight.shape[0] // groups
    per_group = [index[(index >= g * columns) & (index < (g + 1) * columns)] - g * columns for g in range(groups)]
    if len({p.size for p in per_group}) != 1:
        return False  # unequal counts cannot be expressed with one `group` (the decision never makes them)
    blocks = [weight[g * rows : (g + 1) * rows][:, per_group[g]] for g in range(groups)]
    set_constant_input(node, 1, np.concatenate(blocks, axis=0), names, "pruned")
    node.meta[INPUTS_PRUNED] = True
    return True


def _slice_bias(node: ir.Node, index: np.ndarray, names: NameSource) -> None:
    """Conv/ConvTranspose bias, or a Gemm C that varies along the output channels."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return
    bias = constant_array(node.inputs[2])
    if bias is None or bias.size == 1:
        return
    axis = bias.ndim - 1  # [C] or, for Gemm, [1, C]
    set_constant_input(node, 2, np.take(bias, index, axis=axis), names, "pruned")
