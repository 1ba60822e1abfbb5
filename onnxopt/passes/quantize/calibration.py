"""What the quantize pass learns from data, as one value: :class:`Calibration`.

It holds each activation's range (and, with ``calibration=auto``, the method chosen for it), the per-channel
input means bias correction needs, GPTQ's Hessians and the weight levels learned from them. It is built
by :func:`calibrate`, which runs the model once over the calibration samples (onnxruntime, every needed
tensor exposed) and feeds every collector from that one pass over the data; or by :func:`restore`, from
a plan learned on the same graph (:mod:`onnxopt.passes.quantize.planned_calibration`), without running
the model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxopt.passes.base import PassContext
from onnxopt.passes.quantize import policy, range_choice
from onnxopt.passes.quantize.activation_ranges import RangeCollector, Ranges
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.gptq import HessianCollector, gptq_round, nearest_levels
from onnxopt.passes.quantize.planned_calibration import (
    PlannedCalibration,
    decode_levels,
    encode_levels,
    rounding_key,
)
from onnxopt.passes.quantize.range_search import entropy_range, mse_range
from onnxopt.passes.quantize.weight_rounding import channel_means

Rounded = tuple[np.ndarray, np.ndarray]  # (int8 levels, per-channel scales)


@dataclasses.dataclass
class Levels:
    """GPTQ's weight levels of one run, per (node, weight range): learned once and reused by every trial,
    read from a plan (``stored``), and encoded for the plan being saved (``recording``)."""

    stored: dict[str, str] | None = None  # --plan: "node@weight_max" -> the levels it learned (encoded)
    recording: bool = False  # --save-plan: encode every level learned
    rounded: dict[tuple[str, int], Rounded] = dataclasses.field(default_factory=dict)
    encoded: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Calibration:
    """What one quantize run learned from data (or restored from a plan)."""

    ranges: Ranges = dataclasses.field(default_factory=dict)  # tensor -> (low, high)
    methods: dict[str, str] = dataclasses.field(default_factory=dict)  # calibration=auto: tensor -> method
    means: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # bias correction: per-channel means
    hessians: HessianCollector | None = None  # rounding=gptq: each layer's input statistics
    levels: Levels = dataclasses.field(default_factory=Levels)

    def learned(self, node: ir.Node, weight: np.ndarray, weight_max: int) -> Rounded | None:
        """GPTQ's (int8, per-channel scales) for ``node``'s weight (``rounding=gptq``, computed once per run and
        weight range); None where it keeps nearest rounding."""
        key, levels = (node.name, weight_max), self.levels
        if levels.stored is not None and key not in levels.rounded:  # --plan: the levels it learned
            text = levels.stored.get(rounding_key(*key))
            if text is None:
                return None  # nearest rounding in the planning run too
            nearest, scales = nearest_levels(node, weight, weight_max)
            levels.rounded[key] = (decode_levels(text, nearest), scales)
        if key in levels.rounded:
            return levels.rounded[key]
        if self.hessians is None or node.name not in self.hessians.nodes:
            return None
        upper = self.hessians.inverse_factor(node.name)
        if upper is None:
            return None
        levels.rounded[key] = gptq_round(node, weight, upper, weight_max)
        if levels.recording:  # the levels, compactly, for the plan
            levels.encoded[rounding_key(*key)] = encode_levels(
                levels.rounded[key][0], nearest_levels(node, weight, weight_max)[0]
            )
        return levels.rounded[key]

    def planned(self, digest: str) -> PlannedCalibration:
        """What this run learned, as a plan records it (tied to the graph of ``digest``)."""
        return PlannedCalibration(digest, self.ranges, self.methods, self.means, dict(self.levels.encoded))


def restore(stored: PlannedCalibration, tensors: list[ir.Value]) -> Calibration:
    """The calibration a plan recorded, for ``tensors`` (a tensor it lacks has no finite range)."""
    ranges = {v.name: stored.ranges.get(v.name, (np.inf, -np.inf)) for v in tensors if v.name}
    return Calibration(ranges, stored.methods, stored.means, None, Levels(stored=stored.rounding))


def calibrate(
    model: ir.Model,
    context: PassContext,
    config: QuantizeConfig,
    tensors: list[ir.Value],
    mean_inputs: list[str],
    hessians: HessianCollector | None,
    *,
    recording: bool,
) -> Calibration:
    """Run ``model`` once over the calibration samples and learn, from each batch: the ranges of ``tensors``,
    the per-channel means of ``mean_inputs`` (``bias_correct``) and each ``hessians`` layer's statistics."""
    names = [v.name for v in tensors if v.name]
    method = config.calibration
    sample = 0 if method == "minmax" else 65536  # the searches work on a uniform sample of each tensor
    collector = RangeCollector(names, sample_size=sample, seed=context.seed)
    readers = range_choice.ReaderRows(tensors, context.seed) if method == "auto" and tensors else None
    means_of = set(mean_inputs) if config.bias_correct else set()
    sums: dict[str, tuple[np.ndarray, int]] = {}
    layers = hessians.inputs() if hessians is not None else {}
    wanted = names + sorted((set(mean_inputs) | set(layers)) - set(names))
    for arrays in context.activations(model, wanted, config.samples):
        for name, array in arrays.items():
            for layer in layers.get(name, ()):
                hessians.add(layer, array)  # type: ignore[union-attr]
            if name in collector.low:
                collector.add(name, array)
                if readers is not None:
                    readers.add(name, array)
            if name in means_of and array.ndim >= 2:
                total, n = channel_means(array)
                old_total, old_n = sums.get(name, (0.0, 0))
                sums[name] = (old_total + total, old_n + n)
    means = {name: total / n for name, (total, n) in sums.items() if n}
    methods: dict[str, str] = {}
    ranges: Ranges = {}
    for name in names:
        values = collector.samples.get(name)
        if readers is not None and values is not None:
            methods[name], ranges[name] = _chosen_range(config, collector, readers, name, values)
        else:
            ranges[name] = _method_range(config, collector, name, method)
    # Python floats, as a replayed plan's JSON gives them back: the same scales either way
    ranges = {name: (float(low), float(high)) for name, (low, high) in ranges.items()}
    return Calibration(ranges, methods, means, hessians, Levels(recording=recording))


def weight_op_inputs(nodes: list[ir.Node]) -> list[str]:
    """What the bias-corrected weight ops (Conv, Gemm) among ``nodes`` read as input 0, sorted: the inputs whose
    per-channel means bias correction needs."""
    return sorted({n.inputs[0].name for n in nodes if policy.bias_corrected(n) and n.inputs[0].name})


def read_by_weight_ops(tensors: list[ir.Value]) -> list[str]:
    """The ``tensors`` a bias-corrected weight op (Conv, Gemm) reads as input 0."""
    return [v.name for v in tensors if v.name and any(policy.bias_corrected(u.node) and u.idx == 0 for u in v.uses())]


def _method_range(config: QuantizeConfig, collector: RangeCollector, name: str, method: str) -> tuple[float, float]:
    low, high = collector.range(name, config.percentile if method == "percentile" else None)
    values = collector.samples.get(name)
    if method == "mse" and values is not None:
        return mse_range(values, low, high, config.activations)
    if method == "entropy" and values is not None:
        return entropy_range(values, low, high, config.activations)
    return low, high


def _chosen_range(
    config: QuantizeConfig,
    collector: RangeCollector,
    readers: range_choice.ReaderRows,
    name: str,
    values: np.ndarray,
) -> tuple[str, tuple[float, float]]:
    """calibration=auto: the candidate range whose error in the layers reading the tensor is least
    (:mod:`onnxopt.passes.quantize.range_choice`)."""
    kind = config.activations
    candidates = {m: _method_range(config, collector, name, m) for m in range_choice.CANDIDATES}

    def error(low: float, high: float) -> float:
        through = readers.output_error(name, low, high, kind)
        return range_choice.roundtrip_error(values, low, high, kind) if through is None else through

    method, chosen, _ = range_choice.choose_range(candidates, error)
    return method, chosen
