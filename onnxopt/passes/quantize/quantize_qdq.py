"""Static int8 quantization in QDQ form: QuantizeLinear/DequantizeLinear pairs onnxruntime fuses into int8 kernels.

What it quantizes:

* **weights** of Conv, ConvTranspose, Gemm and MatMul (constant, float): per
  output channel, symmetric int8 (``scale_c = max|w_c| / 127``; ``/ 63`` when
  the target CPU lacks VNNI, see :mod:`onnxopt.passes.quantize.cpu_target`), stored as int8
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
  Resize, Reshape, Transpose, Flatten, Squeeze, Unsqueeze -- gets one Q/DQ
  pair shared by all its readers, per tensor: ``uint8`` asymmetric (default),
  ``int8`` symmetric, or ``int16`` symmetric (A16W8; needs opset 21, upgraded
  to). Float constants read by Add/Mul/Concat are quantized per tensor too.
  Graph inputs stay float at the interface; graph outputs and Softmax stay
  float. ``weights_only=true`` stores the weights int8 alone (a 4x smaller file,
  float compute, :mod:`onnxopt.passes.quantize.weight_storage`).
* **weights of nodes that keep float compute** (kept float by the speed search,
  or ops without an integer kernel such as LSTM/GRU): stored int8 per channel
  and decoded by a Cast+Mul that onnxruntime folds when it creates the session
  -- the file shrinks, the speed stays float's (``float_weights=float`` keeps
  them float32; nodes kept float by ``exclude`` or the ``max_drop`` budget keep
  exact weights; the ``max_db_loss`` budget, whose yardstick is the
  weights-only int8 model, keeps its float nodes' weights int8 too).
* **Concats of mixed ranges** (inputs' ranges more than 8x apart: a detector's
  pixel boxes beside its [0, 1] scores) stay float, with the data-movement
  nodes after them: one shared scale would erase the narrow input.
* **Relu after a weight op** (uint8 activations): the Relu is removed and the
  op's output is quantized with the Relu's range -- zero point 0, so the
  quantizer's clamp *is* the Relu.

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
search measures.

Two searches decide which nodes stay float (besides ``exclude``):

* ``fallback=profile`` (the ``int8`` recipe's default): onnxruntime's per-node
  profiler times the float model and the quantized one on the run's provider
  (:mod:`onnxopt.optimizer.node_profile`); nodes whose int8 kernel is slower than their
  float kernel are kept float, a round is kept only if the whole model got
  faster, and when the int8 model is still not faster than the float one
  every node keeps float compute (with int8 weight storage; with
  ``float_weights=float`` the pass declines) -- quantization never makes a
  model slower. Nodes are decided one by one by their own timings first, then
  by op type. The record has each node's float and int8 microseconds.
* ``max_drop=d``: the quantized model is scored against the original
  (:mod:`onnxopt.optimizer.quality`: accuracy with labels, else top-1 agreement, else
  output agreement) on ``eval_samples`` samples; while the drop exceeds ``d``,
  the layers that add the most error (per-layer SNR, :mod:`onnxopt.evaluate.layers`)
  are kept float -- the fewest that fit, found by doubling then bisection. The
  record lists them with the dB each added. A budget no float fallback meets
  declines the pass.
* ``max_db_loss=d`` (the ``int8`` recipe's, 3 dB): the same search, but the
  drop is how many dB of output SNR (worst output, on 32 samples) the model
  loses beyond the *weights-only* int8 model -- the error no activation scheme
  can undo, and the right yardstick. When no fallback fits, every node keeps
  float compute with int8 weights (which meets it by construction).

With ``fallback=profile`` and a budget, speed is checked before the budget as
well as after it: the budget only moves nodes to float, so a model that is not
faster than float once its slower nodes are float ends float anyway, and the
budget's ranking and trials are skipped (on a CPU without VNNI, most models).

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
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import (
    NameSource,
    add_initializer,
    attribute,
    bypass_node,
    constant_array,
    drop_unused_initializers,
    name_unnamed_nodes,
    remove_node_and_orphans,
    subgraph_reads,
)
from onnxopt.passes._weights import check_pattern, weight_axes
from onnxopt.passes.base import OptPass, PassLog
from onnxopt.passes.quantize import cpu_target, range_choice
from onnxopt.passes.quantize.activation_ranges import RangeCollector, Ranges
from onnxopt.passes.quantize.gptq import HessianCollector, gptq_round, nearest_levels
from onnxopt.passes.quantize.planned_calibration import (
    PlannedCalibration,
    decode_levels,
    encode_levels,
    graph_digest,
    rounding_key,
)
from onnxopt.passes.quantize.range_search import entropy_range, mse_range
from onnxopt.passes.quantize.search import FloatFallbackSearch
from onnxopt.passes.quantize.weight_rounding import apply_shift, channel_means, quantize_weight, rounding_shift
from onnxopt.passes.quantize.weight_storage import MIN_ELEMENTS, store_weights_int8

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DATA_OPS = (
    "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "LeakyRelu", "Sigmoid",
    "HardSigmoid", "HardSwish", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather",
)  # fmt: skip
_FLOAT = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
_ZERO_DTYPE = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16}

REFERENCE_SAMPLES = 32  # samples the output SNRs against the weights-only reference are measured on


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    # how activation ranges are chosen; auto: per tensor, the method whose error its readers feel least
    calibration: Literal["minmax", "percentile", "entropy", "mse", "auto"] = "minmax"
    percentile: float = 99.99  # calibration=percentile: the quantile kept
    activations: Literal["uint8", "int8", "int16"] = "uint8"  # uint8 asymmetric, int8 symmetric, int16 = A16W8
    weights_only: bool = False  # int8 weight storage only: float compute, a 4x smaller file
    # the CPU the integer kernels are rounded for (7-bit weights without VNNI); auto: this machine's
    target: Literal["auto", "vnni", "avx2", "arm", "gpu"] = "auto"
    samples: int = 256  # calibration samples of --data
    exclude: str = ""  # regex on node names kept in float
    fallback: Literal["none", "profile"] = "none"  # profile: keep float compute where int8 runs slower
    max_drop: float | None = None  # accuracy budget (onnxopt.optimizer.quality)
    # or: at most this many dB of output SNR (worst output) lost beyond the weights-only int8 model
    max_db_loss: float | None = None
    eval_samples: int = 256  # samples the budgets score on
    bias_correct: bool = False  # fold each layer's mean weight-rounding error into its bias
    profile_batch: int | None = None  # the batch fallback=profile times (default: the run's --batch, else 1)
    # fallback=profile keeps int8 compute only when it runs at most (1 - min_gain) x float's latency: else float
    # compute with int8 weight storage (float's speed, less error) serves better; a near-tie is noise
    min_gain: float = 0.03
    rounding: Literal["nearest", "gptq"] = "nearest"  # gptq: weight levels learned on the calibration data
    float_weights: Literal["int8", "float"] = "int8"  # how nodes that keep float compute store weights

    def __post_init__(self) -> None:
        if self.calibration not in ("minmax", "percentile", "entropy", "mse", "auto"):
            raise ValueError(f"calibration must be minmax, percentile, entropy, mse or auto, not {self.calibration!r}")
        if not 50 < self.percentile <= 100:
            raise ValueError("percentile must be in (50, 100]")
        if self.activations not in _ZERO_DTYPE:
            raise ValueError(f"activations must be uint8, int8 or int16, not {self.activations!r}")
        if self.target not in cpu_target.TARGETS:
            raise ValueError(f"target must be one of {', '.join(cpu_target.TARGETS)}, not {self.target!r}")
        if self.fallback not in ("none", "profile"):
            raise ValueError(f"fallback must be none or profile, not {self.fallback!r}")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ValueError("max_drop must be in [0, 1)")
        if self.max_db_loss is not None and not 0 <= self.max_db_loss <= 100:
            raise ValueError("max_db_loss must be in [0, 100] dB")
        if self.max_drop is not None and self.max_db_loss is not None:
            raise ValueError("give max_drop or max_db_loss, not both")
        if self.samples < 1 or self.eval_samples < 1 or (self.profile_batch is not None and self.profile_batch < 1):
            raise ValueError("samples, eval_samples and profile_batch must be positive")
        if not -1 < self.min_gain < 1:
            raise ValueError("min_gain must be in (-1, 1)")
        if self.rounding not in ("nearest", "gptq"):
            raise ValueError(f"rounding must be nearest or gptq, not {self.rounding!r}")
        if self.float_weights not in ("int8", "float"):
            raise ValueError(f"float_weights must be int8 or float, not {self.float_weights!r}")
        check_pattern(self.exclude)


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
        graph = model.graph
        half = _half_precision(model)
        if half:  # before any work: float32 scales on float16 tensors would not type-check
            log.skip("model", f"{half} is float16/bfloat16: quantize takes float32 models (convert the model first)")
            return
        quantized = already_quantized(model)
        if quantized:  # before any work, as above
            log.skip("model", f"already quantized ({quantized}): quantize takes the float model")
            return
        self._sums_to_adds(log, graph)
        names = NameSource(model)
        self._shuffles_to_gathers(log, graph, names)
        name_unnamed_nodes(model, names)  # exclusions and the report name nodes
        providers = tuple(self.context.providers) if self.context is not None else ("CPUExecutionProvider",)
        target = cpu_target.resolve(self.config.target, providers)
        log.note(f"target {target.name}: {target.reason}")
        pattern = re.compile(self.config.exclude) if self.config.exclude else None
        excluded = {n.name for n in graph if pattern and pattern.search(n.name or "")}
        ranges: Ranges = {}
        self._means: dict[str, np.ndarray] = {}
        self._methods: dict[str, str] = {}  # calibration=auto: each tensor's chosen method
        self._rounded: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._encoded: dict[str, str] = {}  # recording a plan: GPTQ's levels (planned_calibration.encode_levels)
        planned = self.context.planned() if self.context is not None else None
        # --save-plan: what calibration learns goes into the plan too (the digest ties it to this graph)
        self._recording = self.context is not None and self.context.saves_plan()
        self._digest = graph_digest(graph) if planned is not None or self._recording else ""
        stored = self._stored_calibration(log, planned)
        self._stored_rounding = stored.rounding if stored is not None else None
        self._hessians = (
            HessianCollector([n for n in graph if n.name not in excluded], self.require_context().seed)
            if self.config.rounding == "gptq" and stored is None else None
        )  # fmt: skip
        if stored is not None:  # --plan with the calibration it learned: the model is not run
            self._means, self._methods = stored.means, stored.methods
        elif self.config.weights_only and (self.config.bias_correct or self._hessians is not None):
            self._means = self._input_means(model, self._chosen(graph, excluded))
        if not self.config.weights_only:
            tensors = self._activation_tensors(graph, self._chosen(graph, excluded))
            if not tensors:
                return
            if stored is not None:
                ranges = {v.name: stored.ranges.get(v.name, (np.inf, -np.inf)) for v in tensors if v.name}
            else:
                if self.context is not None:
                    self.context.progress.phase(f"{self.name}: calibrating {len(tensors)} tensors")
                ranges = self._calibrate(model, tensors)
            excluded |= _mixed_range_joins(log, graph, self._chosen(graph, excluded), ranges)
        every = {n.name for n in self._chosen(graph, set())} | excluded
        exact, compute, search = set(excluded), "int8", None
        if planned is not None:  # --plan: the recorded precisions, nothing timed
            excluded, exact, compute = self._replayed(log, planned, every)
            log.note(f"precisions replayed from the plan: {len(every - excluded)} node(s) int8, nothing timed")
        elif self.config.fallback == "profile" or self.config.max_drop is not None or self.config.max_db_loss:
            reference = self._weights_only(model, exact) if self.config.max_db_loss is not None else None
            self.require_context().progress.phase(f"{self.name}: profiling int8 against float, node by node")
            search = self._search(model, ranges, excluded, target, log, reference)
            decided = search.run(excluded)
            storage_serves = search.declined == "speed" or (search.declined == "budget" and reference is not None)
            if decided is not None:
                excluded, exact = decided, self._exact_of(decided, search, exact)
            elif storage_serves and self.config.float_weights == "int8":
                excluded, compute = every, "float"  # float compute everywhere, int8 weight storage
            else:
                compute = "none"
        if compute == "none":
            self._record_plan(graph, ranges, every, excluded, exact, compute, target, search)
            return
        carried = self.context is not None and self.context.measurements_carried  # the plan has the SNRs
        reference = None if self.config.weights_only or carried else self._weights_only(model, exact, learned=False)
        self._apply(log, model, ranges, excluded, target, exact=exact)
        self._record_plan(graph, ranges, every, excluded, exact, compute, target, search)  # with every rounding made
        if reference is not None:
            self._report_snr(log, model, reference)

    def _weights_only(self, model: ir.Model, exact: set[str], *, learned: bool = True) -> ir.Model:
        """The right yardstick for activation quantization: a copy with only the weights rounded to int8 (per
        channel, max-abs scales; by this pass's own rounding, or ``learned=False`` to nearest), float compute
        -- what the pass writes when no int8 compute fits."""
        reference = model.clone()
        rounder = (lambda n, w, axis: self._learned(n, w, 127)) if learned else None
        store_weights_int8(reference.graph, NameSource(reference), exact, min_elements=1, rounder=rounder)
        return reference

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

    def _replayed(self, log: PassLog, planned: dict, every: set[str]) -> tuple[set[str], set[str], str]:
        """(kept float, kept exact, compute) from a plan entry; names the model lacks are reported, not used."""
        float_nodes, exact_nodes = set(planned.get("float_nodes", [])), set(planned.get("exact_nodes", []))
        unknown = sorted((float_nodes | exact_nodes) - every)
        if unknown:
            log.skip("plan", f"{len(unknown)} node(s) of the plan are not in this model (first: {unknown[0]})")
        return float_nodes & every, exact_nodes & every, str(planned.get("compute", "int8"))

    def _record_plan(
        self, graph: ir.Graph, ranges: Ranges, every: set[str], excluded: set[str], exact: set[str], compute: str,
        target, search: FloatFallbackSearch | None,
    ) -> None:  # fmt: skip
        """Each node's precision, each tensor's calibrated range and what the search measured, for the plan."""
        if self.context is None:
            return

        def precision(name: str) -> str:
            if compute == "none" or (name in excluded and name in exact):
                return "float"
            return "float compute, int8 weights" if name in excluded else "int8"

        self.context.record_decisions(
            self.name,
            {
                "timed": search is not None and self.config.fallback == "profile",
                "target": target.name,
                "compute": compute,
                "float_nodes": sorted(excluded & every),
                "exact_nodes": sorted(exact & every),
                "nodes": {name: precision(name) for name in sorted(every)},
                "calibration": {"method": self.config.calibration, **self._learned_from_data(ranges).to_dict()},
                "measured": search.measured if search is not None else {},
            },
        )

    def _learned_from_data(self, ranges: Ranges) -> PlannedCalibration:
        """What calibration gave this run, for the plan: ranges, methods, means and GPTQ's levels."""
        return PlannedCalibration(self._digest, ranges, self._methods, self._means, dict(self._encoded))

    def _stored_calibration(self, log: PassLog, planned: dict | None) -> PlannedCalibration | None:
        """A replayed plan's calibration when it was learned on this very graph; else None (calibrate again,
        saying why)."""
        if planned is None:
            return None
        stored, why = PlannedCalibration.of(planned.get("calibration"), self._digest)
        if stored is None:
            log.note(f"calibrated again: {why}")
        else:
            log.note("calibration replayed from the plan (ranges, bias means, learned rounding): the model was not run")
        return stored

    def _sums_to_adds(self, log: PassLog, graph: ir.Graph) -> None:
        """Two-input Sum is Add, which has an integer kernel (QLinearAdd); Sum has none."""
        for node in list(graph):
            if node.op_type == "Sum" and node.domain == "" and len(node.inputs) == 2:
                add = ir.node("Add", list(node.inputs), name=node.name)
                graph.insert_before(node, add)
                out, new = node.outputs[0], add.outputs[0]
                new.dtype, new.shape = out.dtype, out.shape
                bypass_node(graph, node, new, out, x_now_equals_y=True)
                log.count("Sum rewritten as Add")

    def _shuffles_to_gathers(self, log: PassLog, graph: ir.Graph, names: NameSource) -> None:
        """A channel shuffle -- Reshape [N,g,C/g,H,W], Transpose [0,2,1,3,4], Reshape [N,C,H,W] -- becomes one
        Gather of the permuted channels: the same values, but onnxruntime's uint8 5-D Transpose is 15-40x
        slower than its float one (it made int8 ShuffleNet slower than float), while Gather copies whole planes."""
        for node in list(graph):
            transpose = node.inputs[0].producer() if node.op_type == "Reshape" and node.inputs[0] else None
            if transpose is None or transpose.op_type != "Transpose":
                continue
            first = transpose.inputs[0].producer() if transpose.inputs[0] is not None else None
            if first is None or first.op_type != "Reshape" or first.domain or transpose.domain or node.domain:
                continue
            x, out = first.inputs[0], node.outputs[0]
            split = constant_array(first.inputs[1]) if len(first.inputs) > 1 else None
            if (
                x is None or split is None or split.shape != (5,)
                or list(attribute(transpose, "perm", [])) != [0, 2, 1, 3, 4]
                or len(first.outputs[0].uses()) != 1 or len(transpose.outputs[0].uses()) != 1
                or x.shape is None or out.shape is None or len(x.shape) != 4 or len(out.shape) != 4
            ):  # fmt: skip
                continue
            dims = [x.shape[i] for i in range(1, 4)]
            if not all(isinstance(d, int) for d in dims) or dims != [out.shape[i] for i in range(1, 4)]:
                continue
            channels, groups, per_group = dims[0], int(split[1]), int(split[2])
            if groups * per_group != channels or groups < 1:
                continue
            order = np.arange(channels).reshape(groups, per_group).T.reshape(-1)
            index = add_initializer(
                graph, names.fresh(f"{out.name or 'shuffle'}_channel_order"), order.astype(np.int64)
            )
            gather = ir.node("Gather", [x, index], attributes={"axis": 1}, name=node.name)
            graph.insert_before(node, gather)
            gather.outputs[0].dtype, gather.outputs[0].shape = out.dtype, out.shape
            bypass_node(graph, node, gather.outputs[0], out, x_now_equals_y=True)
            remove_node_and_orphans(graph, transpose)
            remove_node_and_orphans(graph, first)
            log.count("channel shuffles rewritten as Gather")

    # ------------------------------------------------------------------ which nodes and tensors

    @staticmethod
    def _chosen(graph: ir.Graph, excluded: set[str]) -> list[ir.Node]:
        return [
            n for n in graph
            if n.domain == "" and (n.op_type in WEIGHT_OPS or n.op_type in DATA_OPS) and n.name not in excluded
        ]  # fmt: skip

    @staticmethod
    def _activation_tensors(
        graph: ir.Graph, chosen: list[ir.Node], keep_float: set[int] = frozenset()
    ) -> list[ir.Value]:
        outputs = {id(v) for v in graph.outputs} | set(keep_float) | subgraph_reads(graph)  # those stay float
        seen: dict[int, ir.Value] = {}
        for node in chosen:
            data_inputs = node.inputs[:1] if node.op_type in WEIGHT_OPS else node.inputs
            if node.op_type in ("Reshape", "Resize", "Clip", "Squeeze", "Unsqueeze", "Gather"):
                data_inputs = node.inputs[:1]
            for value in [*data_inputs, *node.outputs[:1]]:
                if value is None or id(value) in outputs or value.is_initializer() or value.dtype not in _FLOAT:
                    continue
                if value.producer() is not None and value.producer().op_type in ("QuantizeLinear", "DequantizeLinear"):
                    continue
                seen.setdefault(id(value), value)
        return list(seen.values())

    def _calibrate(self, model: ir.Model, tensors: list[ir.Value]) -> Ranges:
        names = [v.name for v in tensors if v.name]
        method = self.config.calibration
        sample = 0 if method == "minmax" else 65536  # the searches work on a uniform sample of each tensor
        context = self.require_context()
        collector = RangeCollector(names, sample_size=sample, seed=context.seed)
        readers = range_choice.ReaderRows(tensors, context.seed) if method == "auto" else None
        weight_inputs = self._weight_inputs(tensors) if self.config.bias_correct else set()
        sums: dict[str, tuple[np.ndarray, int]] = {}
        layers = self._hessians.inputs() if self._hessians is not None else {}
        wanted = names + sorted(set(layers) - set(names))
        for arrays in context.activations(model, wanted, self.config.samples):
            for name, array in arrays.items():
                for layer in layers.get(name, ()):
                    self._hessians.add(layer, array)  # type: ignore[union-attr]
                if name not in collector.low:
                    continue
                collector.add(name, array)
                if readers is not None:
                    readers.add(name, array)
                if name in weight_inputs and array.ndim >= 2:
                    total, n = channel_means(array)
                    old_total, old_n = sums.get(name, (0.0, 0))
                    sums[name] = (old_total + total, old_n + n)
        self._means = {name: total / n for name, (total, n) in sums.items() if n}
        ranges: Ranges = {}
        for name in names:
            values = collector.samples.get(name)
            if readers is not None and values is not None:
                self._methods[name], ranges[name] = self._chosen_range(collector, readers, name, values)
            else:
                ranges[name] = self._method_range(collector, name, method)
        # Python floats, as a replayed plan's JSON gives them back: the same scales either way
        return {name: (float(low), float(high)) for name, (low, high) in ranges.items()}

    def _method_range(self, collector: RangeCollector, name: str, method: str) -> tuple[float, float]:
        low, high = collector.range(name, self.config.percentile if method == "percentile" else None)
        values = collector.samples.get(name)
        if method == "mse" and values is not None:
            return mse_range(values, low, high, self.config.activations)
        if method == "entropy" and values is not None:
            return entropy_range(values, low, high, self.config.activations)
        return low, high

    def _chosen_range(
        self, collector: RangeCollector, readers: range_choice.ReaderRows, name: str, values: np.ndarray
    ) -> tuple[str, tuple[float, float]]:
        """calibration=auto: the candidate range whose error in the layers reading the tensor is least
        (:mod:`onnxopt.passes.quantize.range_choice`)."""
        kind = self.config.activations
        candidates = {m: self._method_range(collector, name, m) for m in range_choice.CANDIDATES}

        def error(low: float, high: float) -> float:
            through = readers.output_error(name, low, high, kind)
            return range_choice.roundtrip_error(values, low, high, kind) if through is None else through

        method, chosen, _ = range_choice.choose_range(candidates, error)
        return method, chosen

    @staticmethod
    def _weight_inputs(tensors: list[ir.Value]) -> set[str]:
        return {
            v.name for v in tensors
            if v.name and any(u.node.op_type in ("Conv", "Gemm") and u.idx == 0 for u in v.uses())
        }  # fmt: skip

    def _input_means(self, model: ir.Model, chosen: list[ir.Node]) -> dict[str, np.ndarray]:
        """Per-channel means of the weight ops' inputs (weights-only quantization with bias correction)."""
        names = sorted({n.inputs[0].name for n in chosen if n.op_type in ("Conv", "Gemm") and n.inputs[0].name})
        layers = self._hessians.inputs() if self._hessians is not None else {}
        sums: dict[str, tuple[np.ndarray, int]] = {}
        for arrays in self.require_context().activations(model, sorted(set(names) | set(layers)), self.config.samples):
            for name, array in arrays.items():
                for layer in layers.get(name, ()):
                    self._hessians.add(layer, array)  # type: ignore[union-attr]
                if name in names and self.config.bias_correct and array.ndim >= 2:
                    total, n = channel_means(array)
                    old_total, old_n = sums.get(name, (0.0, 0))
                    sums[name] = (old_total + total, old_n + n)
        return {name: total / n for name, (total, n) in sums.items() if n}

    # ------------------------------------------------------------------ which nodes stay float

    def _trial(self, model: ir.Model, ranges: Ranges, excluded: set[str], target, exact: set[str]) -> ir.Model:
        """A quantized copy of ``model`` with ``excluded`` kept float, ``exact`` of them with exact weights
        (recorded in a throwaway log)."""
        clone = model.clone()
        self._apply(PassLog(), clone, ranges, excluded, target, exact=exact)
        return clone

    def _search(self, model: ir.Model, ranges: Ranges, excluded: set[str], target, log: PassLog, reference=None):
        """The search for the nodes to keep float so the result is faster than float and within the budget
        (its ``run`` returns None to decline); each trial stores weights as :meth:`_exact_of` says."""
        search: FloatFallbackSearch
        base = set(excluded)  # the user's exclusions and the mixed-range joins: exact weights whatever is decided

        def trial(keep: set[str]) -> ir.Model:
            return self._trial(model, ranges, keep, target, exact=self._exact_of(keep, search, base))

        search = FloatFallbackSearch(
            self.config,
            self.require_context(),
            log,
            model,
            trial=trial,
            quantizable=lambda keep: {n.name: n.op_type for n in self._chosen(model.graph, keep)},
            batch=self.config.profile_batch or self.require_context().batch,
            reference=reference,
        )
        return search

    def _exact_of(self, keep: set[str], search: FloatFallbackSearch, base: set[str]) -> set[str]:
        """Which of the nodes kept float keep exact weights. Nodes kept float for speed store their weights int8.
        Nodes kept float for a ``max_drop`` budget keep them exact (that budget is measured against float);
        under ``max_db_loss`` they store them int8 too, because that budget's yardstick is the weights-only int8
        model: a layer kept float for it still has its weights rounded, and the file stays small."""
        if self.config.max_drop is not None:
            return keep - search.kept_for_speed
        return keep & base

    # ------------------------------------------------------------------ applying

    def _apply(
        self, log: PassLog, model: ir.Model, ranges: Ranges, excluded: set[str], target, *, exact: set[str]
    ) -> None:
        """Quantize ``model`` in place with ``excluded`` kept float; every float weight left (nodes kept float,
        ops without integer kernels) is stored int8 unless its node is in ``exact`` or ``float_weights=float``."""
        graph = model.graph
        chosen = self._chosen(graph, excluded)
        names = NameSource(model)
        if self._means:
            weight_max = 127 if self.config.weights_only else self._weight_max(target)  # storage rounds to 8 bits
            self._correct_biases(log, chosen, weight_max, names)
        if not self.config.weights_only:
            float_tensors = _touching(graph, excluded)
            folded = set()
            if self.config.activations == "uint8":
                folded = self._fold_relus(log, graph, chosen, ranges, float_tensors)
            chosen = [n for n in chosen if id(n) not in folded]
            for value in self._activation_tensors(graph, chosen, _touching(graph, excluded)):
                low, high = ranges.get(value.name or "", (np.inf, -np.inf))
                if not (np.isfinite(low) and np.isfinite(high)):
                    log.skip(value.name or "?", "no finite calibration range")
                    continue
                self._insert_pair(log, graph, value, low, high, names)
        for node in [] if self.config.weights_only else chosen:
            if node.op_type in WEIGHT_OPS:
                self._quantize_weight(log, graph, node, names, self._weight_max(target))
            elif node.op_type in ("Add", "Mul", "Concat"):
                self._quantize_constants(graph, node, names)
        if self.config.float_weights == "int8" or self.config.weights_only:
            everything = 1 if self.config.weights_only else MIN_ELEMENTS  # asked for: every weight, however small
            stored = store_weights_int8(
                graph, names, exact, min_elements=everything, rounder=lambda n, w, axis: self._learned(n, w, 127)
            )
            if stored:
                log.count("weights stored int8 for float compute", len(stored))

    def _weight_max(self, target) -> int:
        """The target's weight range for int8 kernels; 8 bits with int16 activations, which onnxruntime runs
        through float kernels (no u8*s8 pair sums to saturate, so 7 bits would only add error)."""
        return 127 if self.config.activations == "int16" else target.weight_max

    def _correct_biases(self, log: PassLog, chosen: list[ir.Node], weight_max: int, names: NameSource) -> None:
        """Before rounding: each Conv/Gemm bias absorbs the mean output error its weight's rounding will cause."""
        for node in chosen:
            x = node.inputs[0] if node.inputs else None
            if node.op_type not in ("Conv", "Gemm") or x is None or x.name not in self._means:
                continue
            gemm_scaled = attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
            if node.op_type == "Gemm" and (gemm_scaled or attribute(node, "beta", 1.0) != 1.0):
                continue
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            if weight is None or len(weight.uses()) != 1:
                continue
            weight_array = constant_array(weight)
            rounded = self._learned(node, weight_array, weight_max) if weight_array is not None else None
            shift = rounding_shift(node, self._means[x.name], weight_max, rounded)
            if shift is not None and apply_shift(node, shift, names):
                log.count("biases corrected for weight rounding")

    def _fold_relus(
        self, log: PassLog, graph: ir.Graph, chosen: list[ir.Node], ranges: Ranges, float_tensors: set[int]
    ) -> set[int]:
        """Remove Relus right after a weight op; the op's output takes the Relu's name, so its range."""
        folded = set()
        chosen_ids = {id(n) for n in chosen}
        for node in chosen:
            if node.op_type not in WEIGHT_OPS:
                continue
            out = node.outputs[0]
            uses = list(out.uses())
            if out.is_graph_output() or len(uses) != 1 or uses[0].node.op_type != "Relu":
                continue
            relu = uses[0].node
            if id(relu) not in chosen_ids or relu.outputs[0].is_graph_output() or relu.outputs[0].name not in ranges:
                continue
            if id(relu.outputs[0]) in float_tensors:  # stays float: nothing would clamp it in the Relu's place
                continue
            bypass_node(graph, relu, out, relu.outputs[0], x_now_equals_y=True)
            folded.add(id(relu))
            log.count("Relu folded into the quantizer")
        return folded

    # ------------------------------------------------------------------ rewriting

    def _insert_pair(self, log: PassLog, graph: ir.Graph, value: ir.Value, low: float, high: float, names: NameSource):
        scale, zero = _activation_params(low, high, self.config.activations)
        readers = [(u.node, u.idx) for u in value.uses()]  # before the Q node becomes a reader too
        base = value.name or "t"
        s = add_initializer(graph, names.fresh(f"{base}_scale"), np.array(scale, np.float32))
        z = add_initializer(
            graph, names.fresh(f"{base}_zero_point"), np.array(zero, _ZERO_DTYPE[self.config.activations])
        )
        q = ir.node("QuantizeLinear", [value, s, z], name=names.fresh(f"{base}_Q"))
        q.outputs[0].name = names.fresh(f"{base}_quantized")
        dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=names.fresh(f"{base}_DQ"))
        dq.outputs[0].name = names.fresh(f"{base}_dequantized")
        dq.outputs[0].dtype, dq.outputs[0].shape = value.dtype, value.shape
        producer = value.producer()
        if producer is not None:
            graph.insert_after(producer, [q, dq])
        else:
            graph.insert_before(next(iter(graph)), [q, dq])
        for reader, index in readers:
            reader.replace_input_with(index, dq.outputs[0])
        log.count("tensors quantized")
        return scale, zero

    def _quantize_weight(
        self, log: PassLog, graph: ir.Graph, node: ir.Node, names: NameSource, weight_max: int
    ) -> None:
        weight_value = node.inputs[1] if len(node.inputs) > 1 else None
        weight = constant_array(weight_value)
        where = node.name or node.op_type
        if weight is None or weight.dtype.kind != "f" or weight.ndim < 2 or weight_value is None:
            log.skip(where, "its weight is not a float constant matrix or kernel")
            return
        if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0):
            log.skip(where, "Gemm with transA or alpha != 1 stays float")
            return
        axis, _ = weight_axes(node, weight.ndim)
        w_q, w_scale = self._learned(node, weight, weight_max) or quantize_weight(weight, axis, weight_max)
        base = weight_value.name or f"{where}_weight"
        dq = self._dequantize(graph, names, base, w_q, w_scale, np.zeros_like(w_scale, dtype=np.int8), axis)
        node.replace_input_with(1, dq)
        drop_unused_initializers(graph, [weight_value])
        log.count("weights quantized")
        x = node.inputs[0]
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        x_params = self._input_params(x)
        if bias is None or x_params is None or node.op_type == "MatMul" or bias.ndim != 1 or bias.size != w_scale.size:
            return
        b_scale = (x_params[0] * w_scale.astype(np.float64)).astype(np.float32)
        levels = np.round(bias.astype(np.float64) / np.where(b_scale > 0, b_scale, 1.0))
        if not np.isfinite(levels).all() or np.abs(levels).max(initial=0) > np.iinfo(np.int32).max:
            # a bias that int32 cannot hold at scale s_x * s_w (a near-constant input): kept float, so
            # onnxruntime runs this node in float rather than with a wrapped-around bias
            log.skip(where, "its bias overflows int32 at the input's scale: bias kept float")
            return
        b_q = levels.astype(np.int32)
        bias_name = node.inputs[2].name or f"{where}_bias"
        zeros = np.zeros(b_q.size, np.int32)
        old_bias = node.inputs[2]
        node.replace_input_with(2, self._dequantize(graph, names, bias_name, b_q, b_scale, zeros, 0))
        drop_unused_initializers(graph, [old_bias])
        log.count("biases quantized")

    def _learned(self, node: ir.Node, weight: np.ndarray, weight_max: int) -> tuple[np.ndarray, np.ndarray] | None:
        """GPTQ's (int8, per-channel scales) for ``node``'s weight (``rounding=gptq``, computed once per pass run
        and weight range); None where it keeps nearest rounding."""
        key = (node.name, weight_max)
        if self._stored_rounding is not None and key not in self._rounded:  # --plan: the levels it learned
            text = self._stored_rounding.get(rounding_key(*key))
            if text is None:
                return None  # nearest rounding in the planning run too
            nearest, scales = nearest_levels(node, weight, weight_max)
            self._rounded[key] = (decode_levels(text, nearest), scales)
        if key in self._rounded:
            return self._rounded[key]
        if self._hessians is None or node.name not in self._hessians.nodes:
            return None
        upper = self._hessians.inverse_factor(node.name)
        if upper is None:
            return None
        self._rounded[key] = gptq_round(node, weight, upper, weight_max)
        if self._recording:  # the levels, compactly, for the plan
            self._encoded[rounding_key(*key)] = encode_levels(
                self._rounded[key][0], nearest_levels(node, weight, weight_max)[0]
            )
        return self._rounded[key]

    @staticmethod
    def _input_params(x: ir.Value | None) -> tuple[float, int] | None:
        """The scale of the quantized tensor a node reads (through its DequantizeLinear)."""
        producer = x.producer() if x is not None else None
        if producer is None or producer.op_type != "DequantizeLinear":
            return None
        scale = constant_array(producer.inputs[1])
        return (float(scale), 0) if scale is not None and scale.size == 1 else None

    def _quantize_constants(self, graph: ir.Graph, node: ir.Node, names: NameSource) -> None:
        for index, value in enumerate(node.inputs):
            array = constant_array(value)
            if array is None or array.dtype.kind != "f" or value is None:
                continue
            low, high = float(min(array.min(), 0.0)), float(max(array.max(), 0.0))
            scale, zero = _activation_params(low, high, self.config.activations)
            dtype = _ZERO_DTYPE[self.config.activations]
            info = np.iinfo(dtype)
            q = np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
            base = value.name or f"{node.name}_const{index}"
            dq = self._dequantize(graph, names, base, q, np.float32(scale), dtype(zero), None)
            node.replace_input_with(index, dq)
            drop_unused_initializers(graph, [value])

    @staticmethod
    def _dequantize(graph, names, base, q, scale, zero, axis) -> ir.Value:
        q_value = add_initializer(graph, names.fresh(f"{base}_quantized"), q)
        s_value = add_initializer(graph, names.fresh(f"{base}_scale"), np.asarray(scale, np.float32))
        z_value = add_initializer(graph, names.fresh(f"{base}_zero_point"), np.asarray(zero))
        attrs = {} if axis is None else {"axis": axis}
        dq = ir.node("DequantizeLinear", [q_value, s_value, z_value], attributes=attrs, name=names.fresh(f"{base}_DQ"))
        dq.outputs[0].name = names.fresh(f"{base}_dequantized")
        graph.insert_before(next(iter(graph)), dq)
        return dq.outputs[0]


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
_DATA_MOVEMENT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice", "Split")


def _mixed_range_joins(log: PassLog, graph: ir.Graph, chosen: list[ir.Node], ranges: Ranges) -> set[str]:
    """The Concats joining tensors of very different ranges, and the data-movement nodes downstream of them
    (until a node that computes): kept float, so no one scale is shared by boxes and scores."""
    kept: set[str] = set()
    for node in chosen:
        if node.op_type != "Concat" or len(node.inputs) < 2 or node.name in kept:
            continue
        spans = []
        for value in node.inputs:
            array = constant_array(value)
            low, high = (
                (float(array.min()), float(array.max())) if array is not None and array.size
                else ranges.get(value.name or "", (np.inf, -np.inf)) if value is not None else (np.inf, -np.inf)
            )  # fmt: skip
            if np.isfinite(low) and np.isfinite(high):
                spans.append(max(high, 0.0) - min(low, 0.0))
        if len(spans) < 2 or max(spans) <= MIXED_RANGE_RATIO * max(min(spans), 1e-12):
            continue
        ratio = max(spans) / max(min(spans), 1e-12)
        frontier = [node]
        while frontier:
            current = frontier.pop()
            if current.name in kept:
                continue
            kept.add(current.name)
            frontier.extend(
                u.node for v in current.outputs for u in v.uses() if u.node.op_type in _DATA_MOVEMENT and u.node.name
            )
        log.detail(node=node.name, op="Concat", range_ratio=round(ratio, 1), kept="float (inputs of mixed ranges)")
    if kept:
        log.note(f"{len(kept)} node(s) kept float where a Concat joins ranges more than {MIXED_RANGE_RATIO:g}x apart")
    return kept


def _touching(graph: ir.Graph, excluded: set[str]) -> set[int]:
    """The tensors read or written by nodes kept float: they stay float, so onnxruntime cannot fuse those nodes
    back into integer kernels (a Q/DQ pair on either side would let it); readers of them run float too."""
    return {id(v) for n in graph if n.name in excluded for v in (*n.inputs, *n.outputs) if v is not None}


def _activation_params(low: float, high: float, kind: str) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)  # zero must be exactly representable
    if kind in ("int8", "int16"):
        peak = max(abs(low), abs(high))
        top = 127.0 if kind == "int8" else 32767.0
        return (peak / top if peak > 0 else 1.0), 0
    span = high - low
    if span <= 0:
        return 1.0, 0
    scale = span / 255.0
    return scale, int(np.clip(np.round(-low / scale), 0, 255))
