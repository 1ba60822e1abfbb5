"""Static int8 quantization in QDQ form: QuantizeLinear/DequantizeLinear pairs onnxruntime fuses into int8 kernels.

What it quantizes:

* **weights** of Conv, Gemm and MatMul (constant, float): per output channel,
  symmetric int8 (``scale_c = max|w_c| / 127``), stored as int8 with a
  ``DequantizeLinear`` on the right ``axis`` (Conv 0; Gemm 0 with transB=1,
  else 1; MatMul the last axis);
* **biases** of Conv/Gemm whose input is quantized: int32 with
  ``scale = s_x * s_w`` (zero point 0), as onnxruntime's integer kernels expect;
* **activations**: every float tensor entering or leaving a quantized op --
  the weight ops above and Add, Mul, Concat, MaxPool, AveragePool,
  GlobalAveragePool, Relu, Clip, Sigmoid, Resize, Reshape, Transpose,
  Flatten, Squeeze, Unsqueeze -- gets one Q/DQ pair shared by all its
  readers, per tensor: ``uint8`` asymmetric (default) or ``int8`` symmetric.
  Float constants read by Add/Mul/Concat are quantized per tensor too.
  Graph inputs stay float at the interface; graph outputs and Softmax stay
  float.
* **Relu after a weight op** (uint8 activations): the Relu is removed and the
  op's output is quantized with the Relu's range -- zero point 0, so the
  quantizer's clamp *is* the Relu.

Ranges come from calibration through onnxruntime on the run's data
(``calibration=minmax``, or ``percentile`` with ``percentile=99.99``), over
``samples`` samples, streamed (:class:`onnxopt.activation_ranges.RangeCollector`).
Needs opset 13 (per-channel ``axis`` on DequantizeLinear): older models are
upgraded first, never written invalid. Declined with a reason: non-float or
shared-with-unquantized weights, tensors whose range is not finite.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from onnxopt.activation_ranges import RangeCollector
from onnxopt.passes._graph_edit import NameSource, attribute, bypass_node, constant_array, drop_unused_initializers
from onnxopt.passes._weights import check_pattern, weight_axes
from onnxopt.passes.base import OptPass

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
DATA_OPS = (
    "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Sigmoid", "Resize",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
)  # fmt: skip
_FLOAT = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    calibration: str = "minmax"  # or "percentile"
    percentile: float = 99.99
    activations: str = "uint8"  # or "int8" (symmetric)
    samples: int = 256
    exclude: str = ""  # regex on node names kept in float

    def __post_init__(self) -> None:
        if self.calibration not in ("minmax", "percentile"):
            raise ValueError(f"calibration must be minmax or percentile, not {self.calibration!r}")
        if not 50 < self.percentile <= 100:
            raise ValueError("percentile must be in (50, 100]")
        if self.activations not in ("uint8", "int8"):
            raise ValueError(f"activations must be uint8 or int8, not {self.activations!r}")
        if self.samples < 1:
            raise ValueError("samples must be positive")
        check_pattern(self.exclude)


class QuantizeQDQPass(OptPass):
    """Static QDQ int8: per-channel int8 weights, int32 biases, calibrated uint8/int8 activations."""

    name = "quantize"
    Config = QuantizeConfig
    lossless = False
    min_opset = 13

    def rewrite(self, model: ir.Model) -> None:
        graph = model.graph
        self._sums_to_adds(graph)
        exclude = re.compile(self.config.exclude) if self.config.exclude else None
        chosen = [
            n for n in graph
            if n.domain == "" and (n.op_type in WEIGHT_OPS or n.op_type in DATA_OPS)
            and not (exclude and exclude.search(n.name or ""))
        ]  # fmt: skip
        tensors = self._activation_tensors(graph, chosen)
        if not tensors:
            return
        ranges = self._calibrate(model, tensors)
        names = NameSource(model)
        folded = self._fold_relus(graph, chosen, ranges) if self.config.activations == "uint8" else set()
        chosen = [n for n in chosen if id(n) not in folded]
        params: dict[int, tuple[float, int]] = {}
        for value in self._activation_tensors(graph, chosen):
            low, high = ranges.get(id(value), (np.inf, -np.inf))
            if not (np.isfinite(low) and np.isfinite(high)):
                self.skip(value.name or "?", "no finite calibration range")
                continue
            params[id(value)] = self._insert_pair(graph, value, low, high, names)
        for node in chosen:
            if node.op_type in WEIGHT_OPS:
                self._quantize_weight(graph, node, params, names)
            elif node.op_type in ("Add", "Mul", "Concat"):
                self._quantize_constants(graph, node, names)

    def _sums_to_adds(self, graph: ir.Graph) -> None:
        """Two-input Sum is Add, which has an integer kernel (QLinearAdd); Sum has none."""
        for node in list(graph):
            if node.op_type == "Sum" and node.domain == "" and len(node.inputs) == 2:
                add = ir.node("Add", list(node.inputs), name=node.name)
                graph.insert_before(node, add)
                out, new = node.outputs[0], add.outputs[0]
                new.dtype, new.shape = out.dtype, out.shape
                bypass_node(graph, node, new, out, x_now_equals_y=True)
                self.count("Sum rewritten as Add")

    # ------------------------------------------------------------------ which tensors

    @staticmethod
    def _activation_tensors(graph: ir.Graph, chosen: list[ir.Node]) -> list[ir.Value]:
        outputs = {id(v) for v in graph.outputs}
        seen: dict[int, ir.Value] = {}
        for node in chosen:
            data_inputs = node.inputs[:1] if node.op_type in WEIGHT_OPS else node.inputs
            if node.op_type in ("Reshape", "Resize", "Clip", "Squeeze", "Unsqueeze"):
                data_inputs = node.inputs[:1]
            for value in [*data_inputs, *node.outputs[:1]]:
                if value is None or id(value) in outputs or value.is_initializer() or value.dtype not in _FLOAT:
                    continue
                if value.producer() is not None and value.producer().op_type in ("QuantizeLinear", "DequantizeLinear"):
                    continue
                seen.setdefault(id(value), value)
        return list(seen.values())

    def _calibrate(self, model: ir.Model, tensors: list[ir.Value]) -> dict[int, tuple[float, float]]:
        names = [v.name for v in tensors if v.name]
        sample = 65536 if self.config.calibration == "percentile" else 0  # minmax needs no sample
        context = self.require_context()
        collector = RangeCollector(names, sample_size=sample, seed=context.seed)
        for arrays in context.activations(model, names, self.config.samples):
            for name, array in arrays.items():
                collector.add(name, array)
        pct = self.config.percentile if self.config.calibration == "percentile" else None
        by_name = {name: collector.range(name, pct) for name in names}
        return {id(v): by_name[v.name] for v in tensors if v.name in by_name}

    def _fold_relus(self, graph: ir.Graph, chosen: list[ir.Node], ranges: dict) -> set[int]:
        """Remove Relus right after a weight op; the op's output takes the Relu's range (and name)."""
        folded = set()
        for node in chosen:
            if node.op_type not in WEIGHT_OPS:
                continue
            out = node.outputs[0]
            uses = list(out.uses())
            if out.is_graph_output() or len(uses) != 1 or uses[0].node.op_type != "Relu":
                continue
            relu = uses[0].node
            if relu.outputs[0].is_graph_output() or id(relu.outputs[0]) not in ranges:
                continue
            ranges[id(out)] = (0.0, ranges[id(relu.outputs[0])][1])
            bypass_node(graph, relu, out, relu.outputs[0], x_now_equals_y=True)
            folded.add(id(relu))
            self.count("Relu folded into the quantizer")
        return folded

    # ------------------------------------------------------------------ rewriting

    def _insert_pair(self, graph: ir.Graph, value: ir.Value, low: float, high: float, names: NameSource):
        scale, zero = _activation_params(low, high, self.config.activations)
        readers = [(u.node, u.idx) for u in value.uses()]  # before the Q node becomes a reader too
        base = value.name or "t"
        s = _constant(graph, names.fresh(f"{base}_scale"), np.array(scale, np.float32))
        zp_dtype = np.uint8 if self.config.activations == "uint8" else np.int8
        z = _constant(graph, names.fresh(f"{base}_zero_point"), np.array(zero, zp_dtype))
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
        self.count("tensors quantized")
        return scale, zero

    def _quantize_weight(self, graph: ir.Graph, node: ir.Node, params: dict, names: NameSource) -> None:
        weight_value = node.inputs[1] if len(node.inputs) > 1 else None
        weight = constant_array(weight_value)
        where = node.name or node.op_type
        if weight is None or weight.dtype.kind != "f" or weight.ndim < 2 or weight_value is None:
            self.skip(where, "its weight is not a float constant matrix or kernel")
            return
        if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0):
            self.skip(where, "Gemm with transA or alpha != 1 stays float")
            return
        axis, _ = weight_axes(node, weight.ndim)
        peak = np.moveaxis(np.abs(weight.astype(np.float64)), axis, 0).reshape(weight.shape[axis], -1).max(axis=1)
        w_scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        w_q = np.clip(np.round(weight / w_scale.reshape(shape)), -127, 127).astype(np.int8)
        base = weight_value.name or f"{where}_weight"
        dq = self._dequantize(graph, names, base, w_q, w_scale, np.zeros_like(w_scale, dtype=np.int8), axis)
        node.replace_input_with(1, dq)
        drop_unused_initializers(graph, [weight_value])
        self.count("weights quantized")
        x = node.inputs[0]
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        x_params = self._input_params(x, params)
        if bias is None or x_params is None or node.op_type == "MatMul" or bias.ndim != 1 or bias.size != w_scale.size:
            return
        b_scale = (x_params[0] * w_scale.astype(np.float64)).astype(np.float32)
        b_q = np.round(bias / np.where(b_scale > 0, b_scale, 1.0)).astype(np.int32)
        bias_name = node.inputs[2].name or f"{where}_bias"
        zeros = np.zeros(b_q.size, np.int32)
        old_bias = node.inputs[2]
        node.replace_input_with(2, self._dequantize(graph, names, bias_name, b_q, b_scale, zeros, 0))
        drop_unused_initializers(graph, [old_bias])
        self.count("biases quantized")

    @staticmethod
    def _input_params(x: ir.Value | None, params: dict) -> tuple[float, int] | None:
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
            dtype = np.uint8 if self.config.activations == "uint8" else np.int8
            info = np.iinfo(dtype)
            q = np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
            base = value.name or f"{node.name}_const{index}"
            dq = self._dequantize(graph, names, base, q, np.float32(scale), dtype(zero), None)
            node.replace_input_with(index, dq)
            drop_unused_initializers(graph, [value])

    @staticmethod
    def _dequantize(graph, names, base, q, scale, zero, axis) -> ir.Value:
        q_value = _constant(graph, names.fresh(f"{base}_quantized"), q)
        s_value = _constant(graph, names.fresh(f"{base}_scale"), np.asarray(scale, np.float32))
        z_value = _constant(graph, names.fresh(f"{base}_zero_point"), np.asarray(zero))
        attrs = {} if axis is None else {"axis": axis}
        dq = ir.node("DequantizeLinear", [q_value, s_value, z_value], attributes=attrs, name=names.fresh(f"{base}_DQ"))
        dq.outputs[0].name = names.fresh(f"{base}_dequantized")
        graph.insert_before(next(iter(graph)), dq)
        return dq.outputs[0]


def _activation_params(low: float, high: float, kind: str) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)  # zero must be exactly representable
    if kind == "int8":
        peak = max(abs(low), abs(high))
        return (peak / 127.0 if peak > 0 else 1.0), 0
    span = high - low
    if span <= 0:
        return 1.0, 0
    scale = span / 255.0
    return scale, int(np.clip(np.round(-low / scale), 0, 255))


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.dtype = ir.DataType.from_numpy(array.dtype)
    value.shape = ir.Shape(array.shape)
    graph.register_initializer(value)
    return value
