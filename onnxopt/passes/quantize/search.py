"""Which nodes a quantization keeps float: by measured speed (``fallback=profile``) and by an accuracy budget
(``max_drop``, ``max_db_loss``). Used by the ``quantize`` pass (:mod:`onnxopt.passes.quantize.quantize_qdq`), whose
docstring states the contract; this module holds the two searches.

Both work on *trials*: quantized copies of the float model with a given set of nodes kept float, made by
the pass. Every measurement goes through the pipeline's Context (onnxruntime's per-node profiler, interleaved
latency ratios, the quality probe, per-layer errors), never onnxruntime directly.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxopt.evaluate.agreement import SNR_CAP_DB, finite_db
from onnxopt.passes.base import PassContext, PassLog
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.float_cost import cheapest_first

if TYPE_CHECKING:
    from onnxopt.optimizer.budget import AccuracyBudget, ReadingBudget
    from onnxopt.optimizer.node_profile import NodeProfile
    from onnxopt.passes.quantize.learned_values import LearnedValues


#: Samples the max_db_loss budget scores each trial on (output SNR needs fewer than a task metric).
DB_LOSS_SAMPLES = 32
#: Samples the per-layer error ranking runs on: every intermediate tensor of both models is compared, so each
#: sample weighs thousands of values per layer (16 gave the same top 10 as 32 and 64 on the digits CNN and
#: ResNet-50, in half the time of 32).
SENSITIVITY_SAMPLES = 16


class SearchOutcome(enum.StrEnum):
    """Why a search declined int8 compute (``FloatFallbackSearch.declined``)."""

    SPEED = "speed"  # int8 is not faster than float, with the slower nodes kept float
    BUDGET = "budget"  # no float fallback short of nothing quantized meets the accuracy budget


class FloatFallbackSearch:
    """One search over one model: ``run(excluded)`` returns the nodes to keep float, or None to decline."""

    def __init__(
        self,
        config: QuantizeConfig,
        context: PassContext,
        log: PassLog,  # the quantize pass's record: notes, details and declines of the search go there
        model: ir.Model,
        *,
        trial: Callable[[set[str]], ir.Model],
        quantizable: Callable[[set[str]], dict[str, str]],  # kept float -> {node name: op type} still quantized
        batch: int,
        reference: ir.Model | None = None,  # weights-only int8: the yardstick of max_db_loss
        # qat=auto: trains a trial, never on the samples of the probe the budget judges on (the budget picks the
        # epoch kept)
        fine_tune: Callable[[ir.Model, AccuracyBudget], LearnedValues | None] | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.log = log
        self.model = model
        self.trial = trial
        self.quantizable = quantizable
        self.batch = batch
        self.reference = reference
        self.fine_tune = fine_tune
        self.learned: LearnedValues | None = None  # what fine-tuning trained, when the budget kept it
        self.kept_for_speed: set[str] = set()  # nodes kept float because their int8 kernel was slower
        self.declined: SearchOutcome | None = None  # why run() returned None
        self.measured: dict[str, Any] = {}  # what the decisions rest on, for the plan (JSON values)
        self._chosen: tuple[str, AccuracyBudget] | None = None  # the budget that judges, once chosen
        self._ranked_left: list[tuple[str, float]] = []  # the layers the budget ranked and left int8 (dB added)
        self._float_profile: NodeProfile | None = None  # the float model's, profiled in the first speed round
        self._int8_times: dict[str, float] = {}  # each node's int8 µs in the first speed round (conversions charged)
        self._first_int8: tuple[ir.Model, dict[str, str]] | None = None  # that round's int8 trial, its quantized nodes
        self._said_overlap = False  # whether the record says the budget scores calibration's samples

    def run(self, excluded: set[str]) -> set[str] | None:
        budgeted = self.config.budgeted
        if self.config.fallback == "profile":
            # ``current``: the last trial the speed search timed. Its speed-kept nodes may keep exact weights where
            # a fresh trial stores them int8 (decoded at session creation: the same speed), so it serves the speed
            # check below but not the budget, which measures error
            excluded, current = self._keep_slow_nodes_float(excluded)
            # The budget only moves more nodes to float, and the nodes int8 runs slower on are float already:
            # a model not faster than float now will not be after it. Deciding speed first spares the budget's
            # sensitivity ranking and trials where int8 loses anyway (a CPU without VNNI).
            if budgeted:
                if not self._faster_than_float(current):
                    self.declined = SearchOutcome.SPEED
                    return None
                self.measured["int8_over_float_before_budget"] = self.measured.pop("int8_over_float")
        if budgeted:
            decided = self._fit_budget(excluded)
            if decided is None:
                self.declined = SearchOutcome.BUDGET
                return None
            if self.config.fallback == "profile" and decided != excluded:
                decided = self._keep_slow_nodes_float_after_budget(decided)
            excluded = decided
        if self.config.fallback == "profile" and not self._faster_than_float(self.trial(excluded)):
            self.declined = SearchOutcome.SPEED
            return None
        return excluded

    def _say(self, what: str) -> None:
        """One step of the search on the progress line: a long search is never silent."""
        self.context.progress.phase(f"quantize: {what}")

    def _keep_slow_nodes_float(self, excluded: set[str]) -> tuple[set[str], ir.Model]:
        """Keep float the nodes whose int8 kernels the profiler finds slower than their float ones
        (:meth:`_slower_round`). Returns the nodes kept float and the trial built with them."""
        current = self.trial(excluded)
        (float_profile, profile), lost, self._int8_times = self._slower_in_int8(current, excluded)
        self._float_profile, self._first_int8 = float_profile, (current, self.quantizable(excluded))
        self.measured["profile_us"] = {"float": round(float_profile.total, 1), "int8": round(profile.total, 1)}
        self.measured["slower_nodes_us"] = {
            name: [round(f, 1), round(i, 1)] for nodes in lost.values() for name, (f, i) in sorted(nodes.items())
        }
        ratios: list[list[Any]] = self.measured.setdefault("fallback_ratios", [])
        excluded, current, kept_float = self._slower_round(excluded, current, lost, ratios, self.trial)
        self._detail_kept(kept_float, lost, "float (slower in int8)")
        self.log.note(
            f"per-node profile (batch {self.batch}): float {float_profile.total:.0f} µs, "
            f"int8 {profile.total:.0f} µs; {len(kept_float)} slower node(s) of {len(lost)} op type(s) tried kept float"
        )
        return excluded, current

    def _slower_round(
        self,
        excluded: set[str],
        current: ir.Model,
        lost: dict[str, dict[str, tuple[float, float]]],
        ratios: list[list[Any]],
        build: Callable[[set[str]], ir.Model],
        *,
        holds: Callable[[str, ir.Model], bool] | None = None,
    ) -> tuple[set[str], ir.Model, dict[str, tuple[float, float]]]:
        """The ``lost`` nodes (op type -> node -> (float µs, int8 µs)) kept float: all of them at once, each
        decided by its own timing; if that is not measurably faster than ``current``, one op type at a time, most
        time lost first, each kept only if the whole model then runs measurably faster (interleaved timing: the
        islands' extra Q/DQ may cost more than the kernels save). ``build`` makes a trial; ``ratios`` records
        each timing. With ``holds`` (a group's label and trial -> whether the budget holds) only the op types
        one at a time, each kept only where it holds too. Returns the nodes kept float, the trial built with
        them and the nodes added (their times)."""
        order = sorted(lost, key=lambda op: -sum(i - f for f, i in lost[op].values()))
        kept_float: dict[str, tuple[float, float]] = {}
        slower = {name: times for nodes in lost.values() for name, times in nodes.items()}
        groups = [("every slower node", slower)] if slower and holds is None else []  # per node first
        groups += [(op_type, lost[op_type]) for op_type in order if len(order) > 1]  # else one op type at a time
        for label, nodes in groups:
            if set(nodes) <= set(kept_float):
                continue  # every slower node is float already
            candidate = build(excluded | set(nodes))
            if holds is not None and not holds(label, candidate):
                continue
            self._say(f"timing int8 with {len(nodes)} node(s) slower in int8 ({label}) kept float")
            median = self.context.latency_ratio(current, candidate, batch=self.batch).median
            ratios.append([label, round(median, 4)])
            if median < 0.99:
                excluded, current = excluded | set(nodes), candidate
                kept_float.update(nodes)
                self.kept_for_speed |= set(nodes)
        return excluded, current, kept_float

    def _detail_kept(
        self, kept_float: dict[str, tuple[float, float]], lost: dict[str, dict[str, tuple[float, float]]], kept: str
    ) -> None:
        for name, (float_us, int8_us) in sorted(kept_float.items()):
            op = next(op for op, nodes in lost.items() if name in nodes)
            self.log.detail(node=name, op=op, float_us=round(float_us, 1), int8_us=round(int8_us, 1), kept=kept)

    def _slower_in_int8(
        self, quantized: ir.Model, excluded: set[str], *, after_first: bool = False
    ) -> tuple[list[NodeProfile], dict[str, dict[str, tuple[float, float]]], dict[str, float]]:
        """The float model's and ``quantized``'s profiles, taken in turn (profiled one after the other, a change of
        the machine's load reads as a change of kernel: the glyph detector's float model read 48,112 µs in one
        run of the search and 36,644 in another); ``quantized``'s nodes whose int8 kernel -- with the
        conversions onnxruntime runs on their own around it, charged to it -- is slower than their float one (op
        type -> node -> (float µs, int8 µs)); and every quantized node's int8 µs so charged. With
        ``after_first``, the first speed round's int8 trial is profiled in turn with them (its profile comes
        third), and only the nodes that also take more than twice the time they took there count: slowed by
        their float neighbours, not slower in int8 anyway (that round judged those already)."""
        ops = self.quantizable(excluded)
        first = self._first_int8 if after_first else None
        assert first is not None or not after_first, "the first speed round profiles before any later round"
        models = [self.model, quantized] + ([first[0]] if first is not None else [])
        self._say(f"profiling {len(models)} models node by node, in turn ({len(ops)} nodes quantized)")
        float_profile, profile, *others = self.context.profiles(models, batch=self.batch)
        slowed_from = _charged_times(first[0], others[0], first[1]) if first is not None else None
        lost: dict[str, dict[str, tuple[float, float]]] = {}
        times = _charged_times(quantized, profile, ops)
        for name, op_type in ops.items():
            float_us, int8_us = float_profile.times.get(name, 0.0), times[name]
            if slowed_from is not None and int8_us <= 2.0 * slowed_from.get(name, np.inf) + 1.0:
                continue
            if int8_us > float_us + 1.0:
                lost.setdefault(op_type, {})[name] = (float_us, int8_us)
        return [float_profile, profile, *others], lost, times

    def _keep_slow_nodes_float_after_budget(self, excluded: set[str]) -> set[str]:
        """After the budget moved layers to float: the nodes its mixed model runs slower in int8 than in float,
        and more than twice as slow as the first speed round's trial (profiled again with them), kept float too
        (:meth:`_slower_round`), when the budget, checked again, still holds -- or holds with a few more of its
        ranked layers float and the model is then measurably faster (:meth:`_with_more_ranked_float`), or else for
        each of its op types that holds it alone (:meth:`_by_op_type`).

        Float neighbours change what an int8 kernel costs: a MaxPool on uint8 between float Convs runs
        onnxruntime's plain MaxPool kernel, not the NhwcMaxPool of an all-int8 chain (the glyph detector's three
        SPP pools: 5.2 ms against 0.33 ms in float, ``tools/budget_float_cascade.py``), and a lone int8 node
        pays a QuantizeLinear and a DequantizeLinear of its own. Moving nodes to float rounds fewer tensors,
        but the budget is checked rather than assumed."""
        current = self._trained_trial(excluded)
        profiles, lost, _ = self._slower_in_int8(current, excluded, after_first=True)
        totals = [round(p.total, 1) for p in profiles]  # float, this trial, the first round's int8 trial
        record: dict[str, Any] = {"profile_us": dict(zip(("float", "int8", "first_int8"), totals, strict=False))}
        self.measured["after_budget"] = record
        tried = sum(len(nodes) for nodes in lost.values())
        said = f"after the budget: {tried} node(s) slowed in int8 by float neighbours"
        if not lost:
            self.log.note(said)
            return excluded
        ratios: list[list[Any]] = []
        speed_kept = set(self.kept_for_speed)
        decided, _, kept_float = self._slower_round(excluded, current, lost, ratios, self._trained_trial)
        record |= {"ratios": ratios, "kept": sorted(kept_float)}
        if not kept_float:
            self.log.note(f"{said}; none kept float (none measurably faster)")
            return excluded
        _, budget = self._budget()
        self._say("checking the budget again with them float")
        drop = budget.drop(self._trained_trial(decided))
        record["drop"], record["held"] = round(drop, 6), drop <= budget.max_drop
        also = ""
        if drop > budget.max_drop:
            rescued = self._with_more_ranked_float(decided, current, budget, record)
            if isinstance(rescued, str):
                self.kept_for_speed, record["kept"] = speed_kept, []
                shown = f"{budget.describe(drop)}{rescued}"
                partial = self._by_op_type(excluded, current, lost, budget, record)
                if partial is None:
                    self.log.note(f"{said}; none kept float (with them float: {budget.metric} drop {shown})")
                    return excluded
                decided, drop, kept_float = partial
                ops = ", ".join(f"{op} {n}" for op, n, *_ in record["by_op_type"] if op in record["op_types_kept"])
                also = f" of op types that hold the budget alone ({ops}; with all {tried} float: drop {shown})"
            else:
                decided, drop, more = rescued
                for name, added in more:
                    self.log.detail(node=name, added_db=round(added, 2), kept="float (accuracy budget)")
                also = (
                    f" with the budget's next {len(more)} ranked layer(s), measured faster: {record['more_ratio']:.2f}x"
                )
        self._detail_kept(kept_float, lost, "float (slower in int8 after the budget)")
        self.log.note(f"{said}; {len(kept_float)} kept float{also} ({budget.metric} drop {budget.describe(drop)})")
        return decided

    def _with_more_ranked_float(
        self, decided: set[str], current: ir.Model, budget: AccuracyBudget, record: dict[str, Any]
    ) -> tuple[set[str], float, list[tuple[str, float]]] | str:
        """The round's nodes float put the budget over by what a few more layers float may give back: the
        budget's next ranked layers with them -- the fewest of 1, 2, 4 (or all it has left) that meet it -- kept
        when the model then runs measurably faster than ``current`` (the model before the round; interleaved
        timing). Returns (nodes kept float, drop, the layers added with the error each adds), or what was tried
        in a note's words; ``record`` keeps each drop, the timing and the layers added. A bound a hair over the
        limit (0.0101 of 0.01 on the glyph detector) no longer undoes a round that runs faster."""
        more = [(name, added) for name, added in self._ranked_left if name not in decided]
        record["more_ranked"], tried = [], ""
        for k in sorted({min(k, len(more)) for k in (1, 2, 4)} - {0}):
            self._say(f"checking the budget with the next {k} ranked layer(s) float too")
            candidate = decided | {name for name, _ in more[:k]}
            drop = budget.drop(self._trained_trial(candidate))
            record["more_ranked"].append([k, round(drop, 6)])
            tried = f"; with {k} more ranked layer(s) float: {budget.describe(drop)}"
            if drop <= budget.max_drop:
                self._say("timing it against the model before this round (interleaved)")
                ratio = self.context.latency_ratio(current, self._trained_trial(candidate), batch=self.batch).median
                record["more_ratio"] = round(ratio, 4)
                if ratio >= 0.99:
                    return f"{tried}, {ratio:.2f}x the model before this round: not faster"
                record["more_kept"], record["held"] = [name for name, _ in more[:k]], True
                return candidate, drop, more[:k]
        return tried

    def _by_op_type(
        self,
        excluded: set[str],
        current: ir.Model,
        lost: dict[str, dict[str, tuple[float, float]]],
        budget: AccuracyBudget,
        record: dict[str, Any],
    ) -> tuple[set[str], float, dict[str, tuple[float, float]]] | None:
        """The round's nodes all float break the budget, and a few more ranked layers do not mend it: its op
        types one at a time, most time lost first, each kept float when the budget still holds with it and the
        model then runs measurably faster than the one before (interleaved timing). One op type whose move
        breaks the budget no longer keeps the others slow: a round of the glyph detector can hold its SPP
        MaxPools, whose uint8 kernel beside float Convs costs 5.2 ms against 0.33 ms float
        (``tools/budget_float_cascade.py``), beside nodes of other types. Returns (nodes kept float, drop, the
        nodes added with their times), or None when no op type holds; ``record["by_op_type"]`` keeps each op
        type's count and drop, ``record["ratios"]`` the timings (:meth:`_slower_round` with a budget check)."""
        rows: list[list[Any]] = []
        record["by_op_type"], record["op_types_kept"] = rows, []
        if len(lost) < 2:
            return None  # its one op type is the round already tried
        drops: dict[str, float] = {}

        def holds(op_type: str, candidate: ir.Model) -> bool:
            self._say(f"checking the budget with the {len(lost[op_type])} slowed {op_type} node(s) float")
            drops[op_type] = budget.drop(candidate)
            rows.append([op_type, len(lost[op_type]), round(drops[op_type], 6)])
            return drops[op_type] <= budget.max_drop

        decided, _, kept = self._slower_round(
            excluded, current, lost, record.setdefault("ratios", []), self._trained_trial, holds=holds
        )
        kinds = [op for op, *_ in rows if lost[op].keys() <= kept.keys()]  # in the order tried: the last holds all
        if not kinds:
            return None
        record["op_types_kept"], record["kept"], record["held"] = kinds, sorted(kept), True
        record["drop"] = round(drops[kinds[-1]], 6)
        return decided, drops[kinds[-1]], kept

    def _faster_than_float(self, quantized: ir.Model) -> bool:
        """Whether ``quantized`` runs at most ``1 - min_gain`` times ``model``'s latency (interleaved timing).

        One measurement decides only when its median is within the limit and its 95 % interval lies below 1
        (confidently not slower). Otherwise -- a burst of load on a shared machine, or a large model that fits
        few rounds in the time (a 912x1200 detector once measured 0.93 in one run and 1.01, 1.00, 0.97 in the
        next) -- it measures twice more and the median of the three decides."""
        batch, context = self.batch, self.context
        self._say(f"timing int8 against float at batch {batch} (interleaved)")
        first = context.latency_ratio(self.model, quantized, batch=batch, seconds=2.0)
        ratios = [first.median]
        limit = 1.0 - self.config.min_gain
        if first.median > limit or first.high >= 1.0:
            ratios += [context.latency_ratio(self.model, quantized, batch=batch, seconds=2.0).median for _ in range(2)]
        ratio = float(np.median(ratios))
        self.measured["int8_over_float"] = [round(r, 4) for r in ratios]
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        self.log.note(f"int8 latency {ratio:.2f}x float at batch {batch} (interleaved; measured {shown})")
        if ratio > limit:
            said = f"int8 runs {ratio:.2f}x the float latency at batch {batch} on this target (int8 needs {limit:.2f}x)"
            if self.config.float_weights == "int8":
                self.log.note(f"{said}: compute kept float on every node (weights still stored int8)")
            else:
                self.log.skip("model", f"{said}: left float")
            return False
        return True

    def _budget(self) -> tuple[str, AccuracyBudget]:
        """The budget that judges int8 compute, and its knob: ``max_drop`` (against float); else, beyond the
        weights-only reference, ``max_reading_drop`` where the run's data is the user's and the outputs read as a
        task, ``max_db_loss`` (output SNR) otherwise -- saying why when the reading budget does not apply. A
        budget beyond the weights-only reference scores samples calibration did not fit, where the data has them
        (:meth:`_unseen_skip`)."""
        if self._chosen is not None:
            return self._chosen
        config, context = self.config, self.context
        if config.max_drop is not None:
            self._chosen = "max_drop", context.budget(config.max_drop, config.eval_samples)
            return self._chosen
        assert self.reference is not None
        if config.max_reading_drop is not None:
            if context.is_random:  # before any probe: seeded random inputs read no task
                why = "the run has no --data (seeded random inputs read no task)"
            else:
                probe = context.quality_probe(config.eval_samples, skip=self._unseen_skip(config.eval_samples))
                why = None if probe.reads_task else f"the outputs read as {probe.metric}, not a task (--metric)"
            if why is None or config.max_db_loss is None:
                budget = context.reading_budget(
                    self.reference, config.max_reading_drop, config.eval_samples,
                    confidence=config.reading_confidence, skip=self._unseen_skip(config.eval_samples),
                )  # fmt: skip
                self._chosen = "max_reading_drop", budget
                return self._chosen
            self.log.note(f"max_reading_drop does not judge: {why}; max_db_loss does")
        assert config.max_db_loss is not None
        limit = min(config.eval_samples, DB_LOSS_SAMPLES)
        budget = context.snr_budget(self.reference, config.max_db_loss, limit, skip=self._unseen_skip(limit))
        self._chosen = "max_db_loss", budget
        return self._chosen

    def _unseen_skip(self, limit: int) -> int:
        """How many of the data's first samples the budget's probe skips: calibration's (``samples``; rounding
        and bias correction fit the same), when the data holds at least ``limit`` more in whole batches -- a
        budget that judges on the samples the quantizer fitted is flattered (said once in the record when it
        must)."""
        samples, available = self.config.samples, self.context.real_samples()
        if available >= samples + limit:
            if self.context.quality_probe(limit, skip=samples).feeds:
                return samples
            why = f"after its {samples}, --data ({available}) holds no whole batch of the model's"
        else:
            why = f"--data has {available}, {samples + limit} would leave it {limit} unseen ones"
        if not self._said_overlap:
            self._said_overlap = True
            self.log.note(f"the budget scores samples calibration fitted: {why}")
        return 0

    def _fit_budget(self, excluded: set[str]) -> set[str] | None:
        """The fewest most error-adding layers to keep float so the drop stays within ``max_drop`` (of the
        quality probe's metric), ``max_reading_drop`` (of the task reading, beyond the weights-only reference) or
        ``max_db_loss`` (dB of output SNR beyond the weights-only reference). Where the speed search profiled the
        float and the int8 model, "most error-adding" is per µs of int8 speed the layer and the neighbours it
        takes float with it give up (:func:`~onnxopt.passes.quantize.float_cost.cheapest_first`): the error is
        spread over many layers on a model like the glyph detector, and which of them go float decides the
        speed."""
        knob, budget = self._budget()
        self._say(f"scoring all-int8 against the budget ({knob})")
        quantized = self.trial(excluded)
        drop = budget.drop(quantized)
        if knob == "max_drop":
            self.log.note(
                f"{budget.metric}: float {budget.baseline:.4f}, all int8 {budget.baseline - drop:.4f} "
                f"(drop {drop:.4f}, budget {budget.max_drop})"
            )
        elif knob == "max_reading_drop":
            reading: ReadingBudget = budget  # type: ignore[assignment]  # the knob's budget
            self.log.note(
                f"all int8: {reading.point:.4f} {budget.metric}, {budget.describe(drop)} "
                f"(weights-only int8 {budget.baseline:.4f} on samples {budget.probe.start}.."
                f"{budget.probe.stop - 1}; max_reading_drop {budget.max_drop:g})"
            )
        else:
            self.log.note(f"all int8: {drop:.1f} {budget.metric} (max_db_loss {budget.max_drop:g})")
        if drop <= budget.max_drop:
            return excluded
        if self.fine_tune is not None:
            quantized, drop = self._fine_tuned(quantized, drop, budget, knob)
            if drop <= budget.max_drop:
                return excluded
        ranked, order = self._sensitivity(quantized, excluded), "error added"
        float_profile = self._float_profile  # with the first round's int8 times: the speed search profiled both
        if self.config.budget_order == "speed" and float_profile is not None and self._int8_times:
            quantized_nodes = self.quantizable(excluded)
            ranked = cheapest_first(
                ranked, self.model.graph, quantized_nodes, float_profile.times, self._int8_times, kept_float=excluded
            )
            order = "error added per µs of int8 speed given up"
        cache: dict[int, float] = {0: drop}

        def drop_with(k: int) -> float:
            if k not in cache:
                self._say(f"budget: scoring with the first {k} of {len(ranked)} ranked layers kept float")
                cache[k] = budget.drop(self._trained_trial(excluded | {name for name, _ in ranked[:k]}))
            return cache[k]

        high = budget.fewest(drop_with, len(ranked))
        self.measured["budget"] = {
            "metric": budget.metric,
            "order": order,
            "drops": {str(k): round(v, 6) for k, v in sorted(cache.items())},
            "added_db": {name: round(added, 3) for name, added in ranked[: max(high or 0, 1) * 2]},
        }
        if high is None:
            self._decline_for_budget(
                f"{knob}={budget.max_drop} is met by no float fallback short of all {len(ranked)} quantized layers "
                f"({budget.metric} drop with everything int8: {drop:.4f})"
            )
            return None
        kept_float = excluded | {name for name, _ in ranked[:high]}
        if not any(n.op_type == "DequantizeLinear" for n in self._trained_trial(kept_float).graph):
            self._decline_for_budget(f"{knob}={budget.max_drop} is met only with nothing quantized")
            return None
        for name, added in ranked[:high]:
            self.log.detail(node=name, added_db=round(added, 2), kept="float (accuracy budget)")
        self._ranked_left = ranked[high:]
        shown = budget.describe(drop_with(high))
        self.log.note(f"kept {high} layer(s) float for the budget: {budget.metric} drop {shown} (ranked by {order})")
        return kept_float

    def _fine_tuned(
        self, quantized: ir.Model, drop: float, budget: AccuracyBudget, knob: str
    ) -> tuple[ir.Model, float]:
        """``quantized`` after quantization-aware fine-tuning, and its drop -- when training made it better;
        else ``quantized`` and ``drop`` as they were. The values trained are kept for every later trial."""
        assert self.fine_tune is not None
        learned = self.fine_tune(quantized, budget)
        if learned is None or not learned.after:
            return quantized, drop
        trained = quantized.clone()
        learned.apply(trained.graph)
        after = budget.drop(trained)
        self.measured["qat"] = {"before": round(drop, 4), "after": round(after, 4), "values": len(learned.after)}
        shown = (lambda v: f"{v:.1f}") if knob == "max_db_loss" else (lambda v: f"{v:.4f}")
        self.log.note(
            f"after quantization-aware fine-tuning, all int8: {shown(after)} {budget.metric} (was {shown(drop)})"
        )
        if after >= drop:
            self.log.note("fine-tuning did not lower the budget's measure: its values are not used")
            return quantized, drop
        self.learned = learned
        return trained, after

    def _trained_trial(self, keep: set[str]) -> ir.Model:
        """A trial with ``keep`` float, carrying what fine-tuning trained where it applies."""
        model = self.trial(keep)
        if self.learned is not None:
            self.learned.apply(model.graph)
        return model

    def _decline_for_budget(self, reason: str) -> None:
        """Say why no int8 compute fits the budget: with ``max_db_loss`` and int8 weight storage the weights-only
        model (the budget's own reference) is what the pass writes; otherwise the model is left float."""
        if self.config.max_drop is None and self.config.float_weights == "int8":
            self.log.note(f"{reason}: compute kept float on every node (weights still stored int8)")
        else:
            self.log.skip("model", f"{reason}: left float")

    def _sensitivity(self, quantized: ir.Model, excluded: set[str]) -> list[tuple[str, float]]:
        """Quantized nodes, most error added first: the SNR lost (dB) between a matched tensor and the nearest
        matched tensor upstream on its data path (a graph input counts as exact, a graph output is matched too),
        charged to every quantized node in between -- so a Conv whose output only its folded Relu's name
        carries is charged too. Measured against the budget's own yardstick: the weights-only model for
        ``max_db_loss`` (a layer kept float for it keeps int8 weights, so only its activation error goes), the
        float model for ``max_drop``.

        A local score that ranks the first quantized layer after the input first (its upstream is exact).
        Two alternatives were measured against it (``python tools/bench_tool_time.py``'s ResNet-50, max_db_loss
        3 on an AVX2 EPYC): scoring each layer by the error power it adds itself
        (:func:`~onnxopt.evaluate.agreement.own_error_db`) kept 46 layers float, this score 1 (the stem); and
        on the MobileNet-style test model a trial per layer (the budget's drop with that layer alone float) kept
        more float, not fewer, since no single layer there holds the error (each alone recovers at most 1.1
        of its 11.5 dB). Neither sees how later layers amplify an error; this one matches the usual finding
        that the first layer is the most sensitive."""
        base = self.reference if self.config.max_drop is None and self.reference is not None else self.model
        self._say(f"budget: ranking layers by the error each adds ({SENSITIVITY_SAMPLES} samples)")
        report = self.context.layer_errors(base, quantized, limit=SENSITIVITY_SAMPLES)
        quantizable = set(self.quantizable(excluded))
        snr = {layer.tensor: layer.snr_db for layer in report.layers}
        producers = {v.name: n for n in self.model.graph for v in n.outputs if v.name}
        added: dict[str, float] = {}
        for layer in report.layers:
            node, between = producers.get(layer.tensor), []
            upstream = SNR_CAP_DB
            while node is not None:
                between.append(node)
                source = node.inputs[0] if node.inputs else None
                if source is None or source.name in snr or source.producer() is None:
                    upstream = snr.get(source.name, SNR_CAP_DB) if source is not None else SNR_CAP_DB
                    break
                node = source.producer()
            lost = finite_db(upstream) - finite_db(layer.snr_db)
            for node in between:
                if node.name in quantizable:
                    added[node.name] = max(added.get(node.name, -np.inf), lost)
        return sorted(added.items(), key=lambda item: (-item[1], item[0]))


def _charged_times(quantized: ir.Model, profile: NodeProfile, ops: dict[str, str]) -> dict[str, float]:
    """Each of the quantized nodes ``ops``'s µs in ``profile`` of ``quantized``, with the conversions it forces
    (:func:`conversion_costs`) charged to it."""
    conversions = conversion_costs(quantized, profile, set(ops))
    return {name: profile.times.get(name, 0.0) + conversions.get(name, 0.0) for name in ops}


def conversion_costs(quantized: ir.Model, profile: NodeProfile, nodes: set[str]) -> dict[str, float]:
    """Microseconds of the QuantizeLinear / DequantizeLinear kernels onnxruntime still runs on their own in
    ``quantized`` (the ones it did not fuse into an integer kernel: they keep their names in its profile),
    charged to the quantized nodes among ``nodes`` they serve -- a DequantizeLinear to the nodes reading it, a
    QuantizeLinear to the node whose output it quantizes, shared evenly.

    A node's int8 time then counts the conversions its int8 kernel forces where a float neighbour breaks the
    chain: an int8 Sigmoid between two float ops is one QLinearSigmoid plus a QuantizeLinear and a
    DequantizeLinear, and its own kernel alone would call it faster than the float Sigmoid."""
    charged: dict[str, float] = {}
    for node in quantized.graph:
        spent = profile.times.get(node.name or "", 0.0)
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or spent <= 0.0 or not node.inputs:
            continue
        if node.op_type == "DequantizeLinear":
            served = {u.node.name for u in node.outputs[0].uses() if u.node.name in nodes}
        else:
            producer = node.inputs[0].producer() if node.inputs[0] is not None else None
            served = {producer.name} if producer is not None and producer.name in nodes else set()
        for name in served:
            charged[name] = charged.get(name, 0.0) + spent / len(served)
    return charged
