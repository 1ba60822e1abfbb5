"""Static int8 quantization in QDQ form: QuantizeLinear/DequantizeLinear pairs onnxruntime fuses into int8 kernels.

What it quantizes:

* **weights** of Conv, ConvTranspose, Gemm and MatMul (constant, float): per
  output channel, symmetric int8 (``scale_c = max|w_c| / 127``; ``/ 63`` when
  the target CPU lacks VNNI, see :mod:`onnxopt.passes.quantize.cpu_target`; ``per_channel=false``: one
  scale per tensor, for accelerators that take no other), stored as int8
  with a ``DequantizeLinear`` on the right ``axis`` (Conv 0; ConvTranspose 1;
  Gemm 0 with transB=1, else 1; MatMul the last axis); each weight rounded to
  its nearest level, or with ``rounding=gptq`` by GPTQ on the calibration data
  (:mod:`onnxopt.passes.quantize.gptq`: the same scales, levels chosen to
  minimize the layer's output error);
* **biases** of Conv/ConvTranspose/Gemm whose input is quantized: int32 with
  ``scale = s_x * s_w`` (zero point 0), as onnxruntime's integer kernels expect;
* **activations**: every float tensor entering or leaving a quantized op --
  the weight ops above and Add, Mul, Concat, MaxPool, AveragePool,
  GlobalAveragePool, Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish,
  Resize, Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Split -- gets one Q/DQ
  pair shared by all its readers, per tensor: ``uint8`` asymmetric (default),
  ``int8`` symmetric, or ``int16`` symmetric (A16W8; needs opset 21, upgraded
  to). Float constants read by Add/Mul/Concat are quantized per tensor too.
  Graph inputs stay float at the interface, and Softmax stays float. A graph
  output written by an op onnxruntime fuses only with a quantized output (Conv,
  Add, Sigmoid, ...) gets a pair too, so that last op runs int8 and its
  DequantizeLinear is the model's last step (as onnxruntime's own quantizer
  writes it); a Gemm or MatMul output gets one only for an int8 reader: their
  kernels (QGemm, MatMulIntegerToFloat) write float. ``weights_only=true``
  stores the weights int8 alone (a 4x smaller file, float compute,
  :mod:`onnxopt.passes.quantize.weight_storage`).
* **weights of nodes that keep float compute** (kept float by the speed search,
  or ops without an integer kernel such as LSTM/GRU): stored int8 per channel
  and decoded by a Cast+Mul that onnxruntime folds when it creates the session
  -- the file shrinks, the speed stays float's (``float_weights=float`` keeps
  them float32; nodes kept float by ``exclude`` or the ``max_drop`` budget keep
  exact weights; the ``max_db_loss`` and ``max_reading_drop`` budgets, whose
  yardstick is the weights-only int8 model, keep their float nodes' weights
  int8 too).
* **scores the model outputs** -- a Sigmoid, HardSigmoid or Tanh reaching a graph output through data
  movement -- are quantized over the function's whole range, not the calibrated one
  (:mod:`onnxopt.passes.quantize.output_scores`): a detector head whose objects calibration rarely saw
  would otherwise clamp every later score at the small maximum it saw.
* **Concats of mixed ranges** (inputs' ranges more than 8x apart: a detector's
  pixel boxes beside its [0, 1] scores) stay float, with the data-movement
  nodes after them: one shared scale would erase the narrow input. A Concat
  that only feeds graph outputs (through data movement) writes float when its
  inputs are more than 1.25x apart: no integer kernel reads it there, so its
  inputs are dequantized each at its own scale, and their writers stay int8
  (:func:`~onnxopt.passes.quantize.insert_qdq.output_tail`).
* **Relu, or Clip with constant bounds around 0 (ReLU6), after an op onnxruntime
  fuses** (uint8 activations; the op's output read by the activation alone): the
  activation is removed and the op's output is quantized with its range -- within
  the activation's bounds, so the quantizer's clamp *is* the activation, and no
  ``DequantizeLinear -> Clip -> QuantizeLinear`` requantization runs between two
  int8 convolutions.
* **HardSwish and HardSigmoid that keep int8 compute** are written as Add, Clip and Mul
  (:mod:`onnxopt.passes.quantize.expand_activations`): onnxruntime has no int8 kernel for either, and a
  MobileNetV3 ran each between a DequantizeLinear and a QuantizeLinear (the orientation classifier, forced
  int8: 31 + 31 such kernels, 1.38x fp32; written this way 1 + 1, 0.98x).
* **a Mul by a positive scalar constant** ``c`` (the ``/ 6`` of a converted
  HardSwish, once Div by a constant became a Mul) is folded into the quantizer
  before it: ``Q(x, s2 / c, z2)`` holds ``c * x`` at the Mul's own ``(s2, z2)``,
  one elementwise kernel fewer and one rounding less
  (:func:`~onnxopt.passes.quantize.insert_qdq.absorb_scalar_products`).

Ranges come from calibration through onnxruntime on the run's data, over
``samples`` samples, streamed (:class:`onnxopt.passes.quantize.activation_ranges.RangeCollector`):
``minmax``, ``percentile`` (``percentile=99.99``), ``entropy`` (KL) or ``mse``
(:mod:`onnxopt.passes.quantize.range_search`), or ``auto``: per tensor, the one
of those four whose error costs the layers reading the tensor least, each
channel weighted by how strongly the reader's weight reads it
(:mod:`onnxopt.passes.quantize.range_choice`; the plan records each choice).

A node kept float (``exclude``, or either search below) keeps the tensors it
reads and writes float too: with a Q/DQ pair on both sides onnxruntime would
fuse it back into an integer kernel. Its neighbours then read or write float
tensors and run in float as well -- a float island, whose cost the speed
search measures. A tensor whose producer and readers all run float this way
gets no Q/DQ pair: it would feed no integer kernel and only round
(:func:`~onnxopt.passes.quantize.insert_qdq.round_trips`). The exception is
the pair that takes a folded Relu's or Clip's place: it is the activation.

Two searches decide which nodes stay float (besides ``exclude``):

* ``fallback=profile`` (the ``int8`` recipe's default): onnxruntime's per-node
  profiler times the float model and the quantized one on the run's provider
  (:mod:`onnxopt.optimizer.node_profile`); nodes whose int8 kernel -- with the
  QuantizeLinear / DequantizeLinear kernels onnxruntime still runs on their own
  around it, charged to it (:func:`~onnxopt.passes.quantize.search.conversion_costs`)
  -- is slower than their float kernel are kept float, a round is kept only if
  the whole model got faster, and when the int8 model is still not faster than
  the float one every node keeps float compute (with int8 weight storage; with
  ``float_weights=float`` the pass declines) -- quantization never makes a
  model slower. Nodes are decided one by one by their own timings first, then
  by op type. The record has each node's float and int8 microseconds.
* ``max_drop=d``: the quantized model is scored against the original
  (:mod:`onnxopt.optimizer.quality`: accuracy with labels, else top-1 agreement, else
  output agreement) on ``eval_samples`` samples; while the drop exceeds ``d``,
  the layers that add the most error (per-layer SNR, :mod:`onnxopt.evaluate.layers`)
  are kept float -- the fewest that fit, found by doubling then bisection. The
  record lists them with the dB each added. A budget no float fallback meets
  declines the pass. With ``fallback=profile`` the ranking is by error per µs of
  int8 speed given up (:mod:`onnxopt.passes.quantize.float_cost`): a node kept
  float runs its neighbours float too, so its cost is theirs as well, and a
  neighbour of one already float costs less.
* ``max_db_loss=d`` (the ``int8`` recipe's where no task is read, 3 dB): the same search, but the
  drop is how many dB of output SNR (worst output, on 32 samples) the model
  loses beyond the *weights-only* int8 model -- the error no activation scheme
  can undo, and the right yardstick. When no fallback fits, every node keeps
  float compute with int8 weights (which meets it by construction).
* ``max_reading_drop=d`` (the ``int8`` recipe's, 0.01): the same yardstick, but the drop is in the task
  reading (:mod:`onnxopt.evaluate.readings`: accuracy with labels, top-1, whole-sequence or detection agreement,
  on ``eval_samples``), judged at its upper bound at ``reading_confidence`` (a paired bootstrap over the
  samples, :class:`~onnxopt.optimizer.budget.ReadingBudget`). It judges where the run has the user's ``--data``
  and the outputs read as a task; elsewhere (random inputs, outputs read as values, ``--metric values``)
  ``max_db_loss`` does, when given, and the record says why. Judged on its point estimate, at 0.01 on 256
  samples, its outcome on the OCR recognizer turned on the draw (``docs/INT8.md``).

Both budgets beyond the weights-only model score samples after calibration's ``samples`` (which GPTQ and bias
correction fit too) when ``--data`` holds that many more in whole batches; else calibration's, and the record
says so.

``qat=auto`` (the ``int8`` recipe's): when every node the speed search left int8 together misses the
budget, that trial is first fine-tuned against this pass's float input, quantization-aware
(:func:`onnxopt.passes.qat.fine_tune`: the same graph, new int8 levels, scales and int32 biases), on up to
``qat_samples`` of the run's data *but* the samples the budget scores on -- so the budget judges the
fine-tuned model on data training never saw. The budget's own measure on those samples picks the epoch kept
(the start included: none better leaves the trial as it came); the held-back tenth of the training samples
(26 of 256) reads too few to choose by. Outputs that read as detections train on
the detection loss (:mod:`onnxopt.distill.detection_loss`: what the detection reading counts), others on the
relative MSE or the class scores' KL. If that lowers the budget's measure, the
trained values go into every later trial where the tensor is the one trained
(:mod:`onnxopt.passes.quantize.learned_values`) and into the written model; a plan records them, and
``--plan`` writes them back without training. Without ``--data`` of enough samples (the budget's plus 64)
or without TensorFlow (the ``tf`` extra) it does not run, and the record says what it needed.

With ``fallback=profile`` and a budget, speed is checked before the budget as
well as after it: the budget only moves nodes to float, so a model that is not
faster than float once its slower nodes are float ends float anyway, and the
budget's ranking and trials are skipped (on a CPU without VNNI, most models).
Once the budget has moved layers to float, its mixed model is profiled again:
float neighbours change what an int8 kernel costs (a uint8 MaxPool outside an
all-int8 chain runs onnxruntime's plain MaxPool, not NhwcMaxPool), so the nodes
they slowed (more than twice their time before the budget, and slower than
float) go float too -- when that measured faster and the budget, checked again,
still holds, or holds with the budget's next 1, 2 or 4 ranked layers float too
and the model then measures faster than before the round.

Whatever was decided, each output's SNR against the original is recorded beside
that of the plain weights-only reference (nearest rounding, max-abs per
channel). ``--save-plan`` records every decision (each node's precision, the
ranges, the timings and errors) and what calibration learned (bias-correction
means, GPTQ's levels); ``--plan`` replays them without measuring or running the
model, when the plan's graph digest matches the graph this pass received
(:mod:`onnxopt.optimizer.plan`, :mod:`onnxopt.passes.quantize.planned_calibration`).

Needs opset 13 (per-channel ``axis`` on DequantizeLinear): older models are
upgraded first, never written invalid. Declined with a reason: non-float or
shared-with-unquantized weights, tensors whose range is not finite; a float16/bfloat16
model, or one already quantized (Q/DQ pairs, QLinear or integer kernels), as a whole (before any work);
tensors read inside If/Loop/Scan bodies stay float.

How it runs, in five steps (``rewrite``): canonicalize the graph (:mod:`onnxopt.passes.canonicalize`: Sum to Add,
channel shuffles to Gather, Sub/Div by constants to Add/Mul, spatial means to pools, Pads into Convs); calibrate
(:func:`onnxopt.passes.quantize.calibration.calibrate`, one pass over the data) or replay the plan's calibration;
decide each node's precision (the plan's, or the searches', :mod:`onnxopt.passes.quantize.search`); insert the
Q/DQ pairs, int8 weights and int32 biases (:mod:`onnxopt.passes.quantize.insert_qdq`); record the decisions
(:mod:`onnxopt.passes.quantize.plan_entry`).
Which inputs of each op are weights, activations or biases, and what onnxruntime runs it as, is one table:
:mod:`onnxopt.passes.quantize.policy`. What one run learns and decides travels in a :class:`QuantizeRun`.
"""

from __future__ import annotations

import binascii
import dataclasses
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxopt.bench import int8_kernels
from onnxopt.distill.qat import QatConfig
from onnxopt.errors import one_line
from onnxopt.passes._graph_edit import NameSource, name_unnamed_nodes
from onnxopt.passes.base import OptPass, PassLog
from onnxopt.passes.canonicalize import canonicalize, canonicalize_for_integers
from onnxopt.passes.qat import fine_tune, unavailable
from onnxopt.passes.quantize import cpu_target
from onnxopt.passes.quantize.activation_ranges import Ranges
from onnxopt.passes.quantize.calibration import (
    Calibration,
    calibrate,
    read_by_weight_ops,
    restore,
    weight_op_inputs,
)
from onnxopt.passes.quantize.config import QAT_MIN_SAMPLES, QuantizeConfig
from onnxopt.passes.quantize.cpu_target import IntegerTarget
from onnxopt.passes.quantize.gptq import HessianCollector
from onnxopt.passes.quantize.insert_qdq import (
    InsertQDQ,
    activation_tensors,
    carried_from,
    chosen,
    join_range_ratio,
)
from onnxopt.passes.quantize.learned_values import LearnedValues
from onnxopt.passes.quantize.output_scores import widen_output_scores
from onnxopt.passes.quantize.plan_entry import Compute, QuantizePlanEntry
from onnxopt.passes.quantize.planned_calibration import PlannedCalibration, graph_digest
from onnxopt.passes.quantize.search import FloatFallbackSearch, SearchOutcome
from onnxopt.passes.quantize.weight_storage import store_weights_int8

if TYPE_CHECKING:
    from onnxopt.optimizer.budget import AccuracyBudget

__all__ = ["QuantizeConfig", "QuantizeQDQPass", "already_quantized"]

REFERENCE_SAMPLES = 32  # samples the output SNRs against the weights-only reference are measured on


@dataclasses.dataclass
class QuantizeRun:
    """One run of the pass, passed from step to step (the pass object keeps nothing of a run)."""

    model: ir.Model
    log: PassLog
    target: IntegerTarget
    excluded: set[str]  # kept float: the user's exclusions, then the Concats of mixed ranges
    planned: QuantizePlanEntry | None = None  # --plan: this pass's recorded decisions
    digest: str = ""  # graph_digest of the pass's input, when a plan is replayed or saved
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    replay_learned: dict[str, Any] | None = None  # --plan: what fine-tuning trained (LearnedValues.to_plan)
    learned: LearnedValues | None = None  # what this run wrote from fine-tuning, for the plan


@dataclasses.dataclass
class Decision:
    """Which nodes keep float compute (``excluded``), which of those exact weights, and the model's compute."""

    every: set[str]  # every node the pass could quantize
    excluded: set[str]
    exact: set[str]
    compute: Compute = Compute.INT8
    search: FloatFallbackSearch | None = None


class QuantizeQDQPass(OptPass):
    """Static QDQ int8: per-channel int8 weights, int32 biases, calibrated uint8/int8 activations."""

    name = "quantize"
    Config = QuantizeConfig
    lossless = False
    learns_from_data = True
    min_opset = 13

    def required_opset(self, model: ir.Model) -> int | None:
        if self.config.weights_only:
            return 7  # Cast and a broadcasting Mul decode the stored weights
        return 21 if self.config.activations == "int16" else self.min_opset

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        if _refused(model, log):  # before any work
            return
        names = canonicalize(log, model, activations=False)
        name_unnamed_nodes(model, names)  # 1. canonicalize (exclusions and the report name nodes)
        # the rewrites only integer kernels need go in a log of their own, and are undone if compute ends float
        own_ops, for_integers = None, PassLog()
        if not self.config.weights_only:
            own_ops = model.clone()
            canonicalize_for_integers(for_integers, model, names)
        run = self._start(model, log)
        if not self._calibrate(run):  # 2. calibrate, or replay the plan's calibration
            return
        decision = self._decide(run)  # 3. decide precisions: replayed, or searched
        reference = None
        if decision.compute != Compute.NONE:  # 4. insert
            carried = self.context is not None and self.context.measurements_carried  # the plan has the SNRs
            exact = decision.exact
            reference = None if self.config.weights_only or carried else self._weights_only(run, exact, learned=False)
            if decision.compute == Compute.FLOAT and own_ops is not None and for_integers.counts:
                model.graph = own_ops.graph  # float compute everywhere: the model keeps its own ops
                undone = _said(for_integers)
                log.note(f"float compute on every node: the rewrites for integer kernels are undone ({undone})")
                for_integers = PassLog()
                decision.excluded = {n.name for n in model.graph if n.name} | decision.excluded
            self._inserter(run).apply(log, model, decision.excluded, exact=exact)
            self._apply_learned(run, decision, model)
        _merge(log, for_integers)
        self._record(run, decision)  # 5. record: the plan entry (with every rounding made), the output SNRs
        if reference is not None:
            self._report_snr(log, model, reference)

    # ------------------------------------------------------------------ 2. calibrate or replay

    def _start(self, model: ir.Model, log: PassLog) -> QuantizeRun:
        """The run's target, exclusions and plan entry (``--plan``), and the graph digest plans are tied to."""
        providers = tuple(self.context.providers) if self.context is not None else ("CPUExecutionProvider",)
        target = cpu_target.resolve(self.config.target, providers)
        log.note(f"target {target.name}: {target.reason}")
        if target.weight_bits == 8 and int8_kernels.saturating_host(providers):
            log.note(
                "this CPU has no VNNI: its fused int8 kernels saturate on 8-bit weights, so accuracy is scored on "
                "the model as written (what an exact int32 kernel computes); to run it here, target=avx2"
            )
        pattern = re.compile(self.config.exclude) if self.config.exclude else None
        excluded = {n.name for n in model.graph if pattern and pattern.search(n.name or "")}
        entry = self.context.planned() if self.context is not None else None
        planned = QuantizePlanEntry.of(entry) if entry is not None else None
        # --save-plan: what calibration learns goes into the plan too (the digest ties it to this graph)
        recording = self.context is not None and self.context.saves_plan()
        digest = graph_digest(model.graph) if planned is not None or recording else ""
        run = QuantizeRun(model, log, target, excluded, planned, digest)
        run.calibration.levels.recording = recording
        return run

    def _calibrate(self, run: QuantizeRun) -> bool:
        """Fill ``run.calibration``: from the plan when it was learned on this graph, else by running the model
        once. False when nothing is left to quantize (no activation tensor)."""
        graph, config, recording = run.model.graph, self.config, run.calibration.levels.recording
        stored = self._stored_calibration(run)
        hessians = (
            HessianCollector([n for n in graph if n.name not in run.excluded], self.require_context().seed)
            if config.rounding == "gptq" and stored is None else None
        )  # fmt: skip
        nodes = chosen(graph, run.excluded)
        tensors = [] if config.weights_only else activation_tensors(graph, nodes)
        if not config.weights_only and not tensors:
            return False
        if stored is not None:  # --plan with the calibration it learned: the model is not run
            run.calibration = restore(stored, tensors)
        elif tensors:
            if self.context is not None:
                self.context.progress.phase(f"{self.name}: calibrating {len(tensors)} tensors")
            mean_inputs = read_by_weight_ops(tensors)
            run.calibration = calibrate(
                run.model, self.require_context(), config, tensors, mean_inputs, hessians, recording=recording
            )
        elif config.bias_correct or hessians is not None:  # weights only: means and Hessians of weight inputs
            run.calibration = calibrate(
                run.model, self.require_context(), config, [], weight_op_inputs(nodes), hessians, recording=recording
            )
        if not config.weights_only:
            widened = widen_output_scores(graph, run.calibration.ranges)
            if widened:
                run.log.count("output scores given their whole range", len(widened))
            run.excluded |= mixed_range_joins(run.log, graph, chosen(graph, run.excluded), run.calibration.ranges)
        return True

    def _stored_calibration(self, run: QuantizeRun) -> PlannedCalibration | None:
        """A replayed plan's calibration when it was learned on this very graph; else None (calibrate again,
        saying why)."""
        if run.planned is None:
            return None
        stored, why = PlannedCalibration.of(run.planned.calibration, run.digest)
        if stored is None:
            run.log.note(f"calibrated again: {why}")
            if isinstance(run.planned.calibration, dict) and run.planned.calibration.get("qat_values"):
                run.log.note("the plan's fine-tuned values are not applied either: they were trained on that graph")
        else:
            run.replay_learned = run.planned.calibration.get("qat_values") or None
            run.log.note(
                "calibration replayed from the plan (ranges, bias means, learned rounding): the model was not run"
            )
        return stored

    # ------------------------------------------------------------------ 3. decide precisions

    def _decide(self, run: QuantizeRun) -> Decision:
        """Which nodes keep float compute: the plan's, or the searches' (speed, then the budget), or none."""
        config, log = self.config, run.log
        every = {n.name for n in chosen(run.model.graph, set())} | run.excluded
        decision = Decision(every, set(run.excluded), set(run.excluded))
        if config.weights_only:  # nothing to decide: float compute everywhere, weights stored int8
            decision.compute = Compute.FLOAT
        elif run.planned is not None:  # --plan: the recorded precisions, nothing timed
            decision.excluded, decision.exact, decision.compute = self._replayed(run, every)
            log.note(f"precisions replayed from the plan: {len(every - decision.excluded)} node(s) int8, nothing timed")
        elif config.fallback == "profile" or config.budgeted:  # max_db_loss=0 is a budget too
            reference = None
            if config.beyond_weights_only:
                self.require_context().progress.phase(f"{self.name}: rounding the weights (the budget's yardstick)")
                reference = self._weights_only(run, decision.exact)
            search = decision.search = self._search(run, reference)
            decided = search.run(run.excluded)
            storage_serves = search.declined == SearchOutcome.SPEED or (
                search.declined == SearchOutcome.BUDGET and reference is not None
            )
            if decided is not None:
                decision.excluded, decision.exact = decided, self._exact_of(decided, search, run.excluded)
            elif storage_serves and config.float_weights == "int8":
                decision.excluded, decision.compute = every, Compute.FLOAT  # float compute, int8 weight storage
            else:
                decision.compute = Compute.NONE
        return decision

    @staticmethod
    def _replayed(run: QuantizeRun, every: set[str]) -> tuple[set[str], set[str], Compute]:
        """(kept float, kept exact, compute) from the plan entry; names the model lacks are reported, not used."""
        planned = run.planned
        assert planned is not None
        float_nodes, exact_nodes = set(planned.float_nodes), set(planned.exact_nodes)
        unknown = sorted((float_nodes | exact_nodes) - every)
        if unknown:
            run.log.skip("plan", f"{len(unknown)} node(s) of the plan are not in this model (first: {unknown[0]})")
        return float_nodes & every, exact_nodes & every, planned.compute

    def _search(self, run: QuantizeRun, reference: ir.Model | None) -> FloatFallbackSearch:
        """The search for the nodes to keep float so the result is faster than float and within the budget
        (its ``run`` returns None to decline); each trial stores weights as :meth:`_exact_of` says."""
        search: FloatFallbackSearch
        base = set(run.excluded)  # the user's exclusions and the mixed-range joins: exact weights whatever is decided
        inserter = self._inserter(run)

        def trial(keep: set[str]) -> ir.Model:  # a quantized copy, recorded in a throwaway log
            clone = run.model.clone()
            inserter.apply(PassLog(), clone, keep, exact=self._exact_of(keep, search, base))
            return clone

        search = FloatFallbackSearch(
            self.config,
            self.require_context(),
            run.log,
            run.model,
            trial=trial,
            quantizable=lambda keep: {n.name: n.op_type for n in chosen(run.model.graph, keep)},
            batch=self.config.profile_batch or self.require_context().batch,
            reference=reference,
            fine_tune=(lambda m, b: self._fine_tune(run, m, b)) if self.config.qat == "auto" else None,
        )
        return search

    def _fine_tune(self, run: QuantizeRun, quantized: ir.Model, budget: AccuracyBudget) -> LearnedValues | None:
        """``qat=auto``: quantization-aware fine-tuning of the trial ``quantized`` on this pass's float input
        (:func:`onnxopt.passes.qat.fine_tune`), never on the samples ``budget``'s probe scores; the epoch kept is
        the one ``budget`` measures the smallest drop for (the start included), on those samples -- the
        held-back tenth of the rest (26 of 256) is too few to choose by. What it trained, or None (said in the
        record) when it cannot run or no epoch lowered the drop."""
        context, config = self.require_context(), self.config
        said = "quantization-aware fine-tuning (qat=auto) did not run"
        why = unavailable(context, QAT_MIN_SAMPLES)  # random data, no TensorFlow: before any work
        if why is None:
            # fine-tuning never sees the samples the budget judges the result on
            judged = (budget.probe.start, budget.probe.stop)
            why = unavailable(context, judged[1] - judged[0] + QAT_MIN_SAMPLES)
        if why is not None:
            run.log.note(f"{said}: {why}")
            return None
        context.progress.phase(f"{self.name}: quantization-aware fine-tuning against the float model")
        student, teacher = ir.serde.serialize_model(quantized), ir.serde.serialize_model(run.model)
        # a detector's anchor outputs learn from the detection loss (scores KL, score-weighted boxes): the anchors
        # the reading budget counts, not the background the relative MSE is mostly made of (tools/bench_qat_losses.py)
        qat_config = QatConfig(
            epochs=config.qat_epochs, time_budget=config.qat_time_budget, seed=context.seed, detection_loss=None
        )

        def budget_score(changed: dict[str, np.ndarray]) -> float:
            """Minus the budget's drop of ``quantized`` with ``changed`` written in (the epoch's values)."""
            trial = quantized
            if changed:
                trial = quantized.clone()
                LearnedValues.trained(quantized, changed).apply(trial.graph)
            return -budget.drop(trial)

        try:
            result = fine_tune(
                context, student, teacher, qat_config, config.qat_samples, run.log, judged=judged, choose=budget_score
            )
        except Exception as e:  # an optional step of the recipe (TensorFlow out of memory, ...): quantize goes on
            result = f"{type(e).__name__}: {one_line(e)}"
        if isinstance(result, str):
            run.log.note(f"{said}: {result}")
            return None
        drops = ", ".join(f"{-score:.4f}" for score in result.training.chosen)
        kept = f"epoch {result.training.best_epoch}" if result.training.best_epoch else "none"
        run.log.note(f"qat: the budget's drop at the start then after each epoch, on its samples {drops}; kept {kept}")
        return LearnedValues.trained(quantized, result.changed) if result.changed else None

    def _apply_learned(self, run: QuantizeRun, decision: Decision, model: ir.Model) -> None:
        """Put what fine-tuning trained -- in this run, or in the plan's -- into the written model."""
        learned = decision.search.learned if decision.search is not None else None
        if run.replay_learned is not None:
            try:
                learned = LearnedValues.of_plan(run.replay_learned, model.graph)
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
                run.log.skip("plan", f"the plan's fine-tuned values do not fit this model ({one_line(e)})")
                return
        if learned is None:
            return
        applied = learned.apply(model.graph)
        if applied:
            run.learned = learned.subset(applied)
            run.log.count("values set by quantization-aware fine-tuning", len(applied))

    def _exact_of(self, keep: set[str], search: FloatFallbackSearch, base: set[str]) -> set[str]:
        """Which of the nodes kept float keep exact weights. Nodes kept float for speed store their weights int8.
        Nodes kept float for a ``max_drop`` budget keep them exact (that budget is measured against float);
        under ``max_db_loss`` or ``max_reading_drop`` they store them int8 too, because those budgets' yardstick
        is the weights-only int8 model: a layer kept float for it still has its weights rounded, and the file
        stays small."""
        if self.config.max_drop is not None:
            return keep - search.kept_for_speed
        return keep & base

    def _weights_only(self, run: QuantizeRun, exact: set[str], *, learned: bool = True) -> ir.Model:
        """The right yardstick for activation quantization: a copy with only the weights rounded to int8 (per
        channel, max-abs scales; by this pass's own rounding, or ``learned=False`` to nearest), float compute
        -- what the pass writes when no int8 compute fits."""
        reference = run.model.clone()
        calibration = run.calibration
        rounder = (lambda n, w, axis: calibration.learned(n, w, 127)) if learned else None
        store_weights_int8(reference.graph, NameSource(reference), exact, min_elements=1, rounder=rounder)
        return reference

    def _inserter(self, run: QuantizeRun) -> InsertQDQ:
        return InsertQDQ(self.config, run.calibration, run.target)

    # ------------------------------------------------------------------ 5. record

    def _record(self, run: QuantizeRun, decision: Decision) -> None:
        """Each node's precision, each tensor's calibrated range and what the search measured, for the plan."""
        if self.context is None:
            return
        search = decision.search
        entry = QuantizePlanEntry.decided(
            decision.every,
            decision.excluded,
            decision.exact,
            decision.compute,
            timed=search is not None and self.config.fallback == "profile",
            target=run.target.name,
            calibration={
                "method": self.config.calibration,
                **run.calibration.planned(run.digest).to_dict(),
                **({"qat_values": run.learned.to_plan()} if run.learned is not None and run.learned.after else {}),
            },
            measured=search.measured if search is not None else {},
        )
        self.context.record_decisions(self.name, entry.to_dict())

    def _report_snr(self, log: PassLog, model: ir.Model, reference: ir.Model) -> None:
        """Each output's SNR against the original beside the weights-only int8 reference's, on a few samples
        of the run's data: what activation quantization costs beyond rounding the weights."""
        probe = self.require_context().quality_probe(min(REFERENCE_SAMPLES, self.config.eval_samples))
        got, yardstick = probe.output_snr(model), probe.output_snr(reference)
        shown = []
        for name in probe.names:
            log.detail(output=name, snr_db=round(got[name], 1), weights_only_snr_db=round(yardstick[name], 1))
            shown.append(f"{name} {got[name]:.1f} dB (weights-only int8 {yardstick[name]:.1f} dB)")
        more = f" and {len(shown) - 4} more" if len(shown) > 4 else ""
        log.note(f"output SNR vs float on {len(probe.feeds)} batch(es): {'; '.join(shown[:4])}{more}")


def _said(log: PassLog) -> str:
    """``log``'s counts as text: "Pad folded into the following Conv 1, ..."."""
    return ", ".join(f"{what} {n}" for what, n in sorted(log.counts.items()))


def _merge(log: PassLog, part: PassLog) -> None:
    """Everything ``part`` recorded, into ``log``."""
    log.counts.update(part.counts)
    log.declines.extend(part.declines)
    log.details.extend(part.details)
    log.notes.extend(part.notes)


def _refused(model: ir.Model, log: PassLog) -> bool:
    """Whether the model as a whole is not this pass's to quantize (said in ``log``): float32 scales on float16
    tensors would not type-check, and a quantized model would be rounded twice."""
    half = _half_precision(model)
    if half:
        log.skip("model", f"{half} is float16/bfloat16: quantize takes float32 models (convert the model first)")
        return True
    quantized = already_quantized(model)
    if quantized:
        log.skip("model", f"already quantized ({quantized}): quantize takes the float model")
        return True
    return False


#: Ops that only a quantized model has: QDQ pairs and the kernels quantizers write directly.
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
     "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul"}
)  # fmt: skip


def already_quantized(model: ir.Model) -> str | None:
    """How the model is already quantized ("12 QuantizeLinear, 12 DequantizeLinear nodes"), or None: a quantizer
    given such a model would quantize rounded values again and calibrate on what it cannot undo."""
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in QUANTIZED_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return None
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) + " node(s)"


def _half_precision(model: ir.Model) -> str | None:
    """The first graph input, output or initializer in float16/bfloat16, described; None if there is none."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    graph = model.graph
    for kind, values in (
        ("input", graph.inputs),
        ("output", graph.outputs),
        ("initializer", graph.initializers.values()),
    ):
        for value in values:
            if value.dtype in half:
                return f"{kind} '{value.name}'"
    return None


#: A Concat whose inputs' ranges differ by more than this factor stays float: one shared scale would leave the
#: narrowest input fewer than 256 / 8 = 32 levels (a detector's [0, 1] scores beside its boxes' pixels get none).
MIXED_RANGE_RATIO = 8.0


def mixed_range_joins(log: PassLog, graph: ir.Graph, chosen: list[ir.Node], ranges: Ranges) -> set[str]:
    """The Concats joining tensors of very different ranges, and the data-movement nodes downstream of them
    (until a node that computes): kept float, so no one scale is shared by boxes and scores."""
    kept: set[str] = set()
    for node in chosen:
        if node.op_type != "Concat" or node.name in kept:
            continue
        ratio = join_range_ratio(node, ranges)
        if ratio is None or ratio <= MIXED_RANGE_RATIO:
            continue
        kept |= {current.name for current in carried_from(node) if current.name}
        log.detail(node=node.name, op="Concat", range_ratio=round(ratio, 1), kept="float (inputs of mixed ranges)")
    if kept:
        log.note(f"{len(kept)} node(s) kept float where a Concat joins ranges more than {MIXED_RANGE_RATIO:g}x apart")
    return kept
