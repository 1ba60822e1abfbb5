"""Bias correction for int8 weights (Nagel et al. 2019, sec. 4.2): cancel the mean output shift weight rounding causes.

Run it just before ``quantize``. For every Conv (any group) and Gemm with a
float constant weight, the pass rounds the weight exactly as ``quantize``
will (:func:`onnxopt.passes.quantize.quantize_qdq.quantize_weight`: per output channel,
symmetric, 8 or 7 bits for the same ``target``), takes the error
``dW = Q(W) - W`` and the per-channel mean ``E[x]`` of the layer's input on
the run's data (one pass through onnxruntime, streamed), and subtracts the
expected output error ``dW . E[x]`` (for a Conv: summed over the kernel, which
ignores zero padding at the borders) from the bias -- adding a bias when the
layer had none. The float model then computes a slightly shifted function
whose quantized version has the float model's mean outputs (the guard measures
the float shift; the pass is lossy by construction).

Declined: weights shared with another node, ConvTranspose/MatMul (no bias
input to correct in place), inputs without a known channel axis.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import NameSource, attribute, constant_array
from onnxopt.passes.base import OptPass, PassLog
from onnxopt.passes.quantize import cpu_target, policy
from onnxopt.passes.quantize.weight_rounding import apply_shift, channel_means, rounding_shift


@dataclasses.dataclass(frozen=True)
class BiasCorrectConfig:
    target: str = dataclasses.field(
        default="auto",
        metadata={"help": "the quantizer's target: the same rounding (onnxopt.passes.quantize.cpu_target)"},
    )
    samples: int = dataclasses.field(
        default=256, metadata={"help": "samples of the run's data the layers' input means are taken over"}
    )

    def __post_init__(self) -> None:
        if self.target not in cpu_target.TARGETS:
            raise ValueError(f"target must be one of {', '.join(cpu_target.TARGETS)}, not {self.target!r}")
        if self.samples < 1:
            raise ValueError("samples must be positive")


class BiasCorrectPass(OptPass):
    """Fold the expected output error of int8 weight rounding into each Conv/Gemm bias (run before quantize)."""

    name = "bias-correct"
    Config = BiasCorrectConfig
    lossless = False
    learns_from_data = True

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        context = self.require_context()
        target = cpu_target.resolve(self.config.target, tuple(context.providers))
        layers = [n for n in model.graph if self._eligible(log, n)]
        inputs = sorted({n.inputs[0].name for n in layers if n.inputs[0].name})
        if not inputs:
            return
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = dict.fromkeys(inputs, 0)
        for arrays in context.activations(model, inputs, self.config.samples):
            for name, array in arrays.items():
                total, n = channel_means(array)
                sums[name] = sums.get(name, 0) + total
                counts[name] += n
        names = NameSource(model)
        for node in layers:
            name = node.inputs[0].name
            if name not in sums or not counts[name]:
                continue
            self._correct(log, node, sums[name] / counts[name], target.weight_max, names)

    def _eligible(self, log: PassLog, node: ir.Node) -> bool:
        if not policy.bias_corrected(node) or node.domain != "" or len(node.inputs) < 2:
            return False
        weight, x = node.inputs[1], node.inputs[0]
        where = node.name or node.op_type
        array = constant_array(weight)
        if weight is None or x is None or array is None or array.dtype.kind != "f" or array.ndim < 2:
            return False
        if x.shape is not None and len(x.shape) < 2:
            return False
        if len(weight.uses()) != 1:
            log.skip(where, "its weight is shared with another node")
            return False
        if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0):
            log.skip(where, "Gemm with transA or alpha != 1")
            return False
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = constant_array(node.inputs[2])
            if bias is None or bias.ndim != 1 or attribute(node, "beta", 1.0) != 1.0:
                log.skip(where, "its C is not a 1-D constant bias with beta 1")
                return False
        return True

    def _correct(self, log: PassLog, node: ir.Node, mean_x: np.ndarray, weight_max: int, names: NameSource) -> None:
        shift = rounding_shift(node, mean_x, weight_max)
        if shift is None:
            log.skip(node.name or node.op_type, "its input's channel count does not match the weight")
            return
        if not apply_shift(node, shift, names):
            log.skip(node.name or node.op_type, "its bias is not a constant per output channel")
            return
        log.detail(layer=node.name, max_shift=float(np.max(np.abs(shift))))
        log.count("biases corrected")
