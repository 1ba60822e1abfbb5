"""What the quantize pass does to each op type: one row per op, written against onnxruntime's QDQ rules.

A row says which inputs are *weights* (constant, stored int8 per channel, and along which axis), which
are *activations* (calibrated, one Q/DQ pair per tensor), where the *bias* is (int32 at ``s_x * s_w``),
whether the output is *requantized* (its own calibrated scale) or *carried* (data movement: the output
holds the input's values, moved or selected one for one, so a shared scale passes through), and which
kernel onnxruntime's CPU provider runs the DequantizeLinear -> op -> QuantizeLinear group as.

Ops with ``quantized=False`` get no Q/DQ pairs: their rows say only how their constant weights are
stored when compute stays float (LSTM/GRU/RNN, an embedding Gather). An op without a row is left alone.

The fusion work adds rows here rather than branches to the pass.

Weight layouts (the axis rule of each weight op):

============== ================= ==================== ====================
op             weight layout     output-channel axis  input-channel axis
============== ================= ==================== ====================
Conv           [C_out, C_in/g..] 0                    1
ConvTranspose  [C_in, C_out/g..] 1                    0
Gemm transB=0  [K, N]            1                    0
Gemm transB=1  [N, K]            0                    1
MatMul         [..., K, N]       -1                   -2
============== ================= ==================== ====================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import onnx_ir as ir

from onnxopt.passes._graph_edit import attribute, constant_array

#: (node, weight rank) -> (output-channel axis, input-channel axis), both non-negative
AxisRule = Callable[[ir.Node, int], "tuple[int, int]"]

#: A QDQ group onnxruntime does not fuse: it runs DequantizeLinear -> float op -> QuantizeLinear.
FLOAT_KERNEL = "float (DQ -> op -> Q)"
#: A data-movement op onnxruntime runs directly on the int8 tensor (its Q/DQ pair dropped).
ON_INT8 = "the op itself, on int8 (Q/DQ dropped)"
#: An activation onnxruntime absorbs into the quantizer before it (zero point and clamp do its work).
ABSORBED = "absorbed into the preceding quantizer"


def _fixed(out_axis: int, in_axis: int) -> AxisRule:
    return lambda node, ndim: (out_axis, in_axis)


def _gemm_axes(node: ir.Node, ndim: int) -> tuple[int, int]:
    return (0, 1) if attribute(node, "transB", 0) else (1, 0)


def _matmul_axes(node: ir.Node, ndim: int) -> tuple[int, int]:
    return ndim - 1, ndim - 2


def _table_rows(node: ir.Node, ndim: int) -> tuple[int, int]:
    return 0, 1


@dataclasses.dataclass(frozen=True)
class WeightInput:
    """A constant input stored int8 per channel: its index, the ranks it is read at, and its axis rule."""

    index: int
    axes: AxisRule
    ranks: tuple[int, int] = (2, 99)  # the weight's rank, inclusive: a Conv kernel or a matrix
    when: Callable[[ir.Node], bool] | None = None  # a further condition on the node (Gather's axis)

    def applies(self, node: ir.Node, index: int, ndim: int) -> bool:
        low, high = self.ranks
        return index == self.index and low <= ndim <= high and (self.when is None or self.when(node))


@dataclasses.dataclass(frozen=True)
class OpPolicy:
    """How the quantize pass treats one op type."""

    op_type: str
    quantized: bool = True  # the pass places Q/DQ pairs around it (it may keep int8 compute)
    activations: tuple[int, ...] | None = None  # inputs that get a Q/DQ pair; None: every input
    weight: WeightInput | None = None  # the integer kernel's weight: int8 per output channel
    bias: int | None = None  # the bias input, int32 at s_x * s_w (when the input and weight are quantized)
    bias_corrected: bool = False  # bias_correct: its bias absorbs the mean output error of weight rounding
    stored: tuple[WeightInput, ...] = ()  # further constant inputs stored int8 when compute stays float
    output: Literal["requantized", "carried"] = "requantized"
    constants: bool = False  # float constants among its inputs are quantized per tensor (per-tensor Q)
    kernel: str = FLOAT_KERNEL  # what onnxruntime's CPU provider runs the QDQ group as
    # its integer kernel may write a float output (QGemm, MatMulIntegerToFloat): no Q after it unless an int8
    # consumer reads it -- one kernel fewer, and no 8-bit rounding of what float consumers read
    float_output: bool = False

    @property
    def fused_output(self) -> bool:
        """Whether onnxruntime fuses this op into an integer kernel only when its output is quantized too (so a
        graph output it writes gets a Q/DQ pair: the last DequantizeLinear is then the model's only float step)."""
        return (
            self.quantized
            and self.output == "requantized"
            and not self.float_output
            and self.kernel not in (FLOAT_KERNEL, ABSORBED, ON_INT8)
        )

    @property
    def weights(self) -> tuple[WeightInput, ...]:
        """Every constant input stored int8 when compute stays float: the weight, then the others."""
        return (self.weight, *self.stored) if self.weight is not None else self.stored


def _row(op_type: str, **fields) -> tuple[str, OpPolicy]:
    return op_type, OpPolicy(op_type, **fields)


_CONV = WeightInput(1, _fixed(0, 1))
_RECURRENT = (WeightInput(1, _fixed(1, 2), ranks=(3, 3)), WeightInput(2, _fixed(1, 2), ranks=(3, 3)))
# a table read by rows (embeddings, low-rank's exact head rows): one scale per row
_EMBEDDING = WeightInput(0, _table_rows, ranks=(2, 2), when=lambda node: attribute(node, "axis", 0) in (0, -2))
_FIRST = (0,)  # only the data input: shapes, scales, sizes and indices are not activations

#: Every op type the quantize pass knows, in the order the pass's docstring lists them.
POLICY: dict[str, OpPolicy] = dict([
    _row("Conv", activations=_FIRST, weight=_CONV, bias=2, bias_corrected=True, kernel="QLinearConv"),
    _row("ConvTranspose", activations=_FIRST, weight=WeightInput(1, _fixed(1, 0)), bias=2),
    _row("Gemm", activations=_FIRST, weight=WeightInput(1, _gemm_axes), bias=2, bias_corrected=True, kernel="QGemm",
         float_output=True),
    _row("MatMul", activations=_FIRST, weight=WeightInput(1, _matmul_axes), kernel="QLinearMatMul", float_output=True),
    _row("Add", constants=True, kernel="QLinearAdd"),
    _row("Mul", constants=True, kernel="QLinearMul"),
    _row("Concat", constants=True, output="carried", kernel="QLinearConcat"),
    _row("MaxPool", kernel=ON_INT8),
    _row("AveragePool", kernel="QLinearAveragePool"),
    _row("GlobalAveragePool", kernel="QLinearGlobalAveragePool"),
    _row("Relu", kernel=ABSORBED),
    _row("Clip", activations=_FIRST, kernel=ABSORBED),
    _row("LeakyRelu", kernel="QLinearLeakyRelu"),
    _row("Sigmoid", kernel="QLinearSigmoid"),
    _row("HardSigmoid"),
    _row("PRelu", activations=_FIRST),  # no int8 kernel: written as Mul, Relu, Mul, Add when it runs int8
    _row("HardSwish"),
    _row("Resize", activations=_FIRST, kernel=ON_INT8),
    _row("Reshape", activations=_FIRST, output="carried", kernel=ON_INT8),
    _row("Transpose", output="carried", kernel=ON_INT8),
    _row("Flatten", output="carried", kernel=ON_INT8),
    _row("Squeeze", activations=_FIRST, output="carried", kernel=ON_INT8),
    _row("Unsqueeze", activations=_FIRST, output="carried", kernel=ON_INT8),
    _row("Gather", activations=_FIRST, stored=(_EMBEDDING,), output="carried", kernel=ON_INT8),
    _row("Slice", activations=_FIRST, output="carried", kernel=ON_INT8),
    _row("Split", activations=_FIRST, output="carried", kernel=ON_INT8),
    # no Q/DQ of their own: float-compute weight storage
    _row("LSTM", quantized=False, stored=_RECURRENT),  # [directions, gates * hidden, inputs]: a scale per row
    _row("GRU", quantized=False, stored=_RECURRENT),
    _row("RNN", quantized=False, stored=_RECURRENT),
])  # fmt: skip


def of(node: ir.Node) -> OpPolicy | None:
    """``node``'s row; None for ops of other domains or without one."""
    return POLICY.get(node.op_type) if node.domain in ("", "ai.onnx") else None


def quantizable(node: ir.Node) -> bool:
    """Whether the pass places Q/DQ pairs around ``node`` (default domain only)."""
    row = POLICY.get(node.op_type)
    return node.domain == "" and row is not None and row.quantized


def weight_ops() -> tuple[str, ...]:
    """The op types read through a weight (input 1) of an integer kernel: Conv, ConvTranspose, Gemm, MatMul."""
    return tuple(op for op, row in POLICY.items() if row.weight is not None)


def has_weight(node: ir.Node) -> bool:
    """Whether ``node``'s op reads a weight (input 1) when quantized."""
    row = POLICY.get(node.op_type)
    return row is not None and row.weight is not None


def bias_corrected(node: ir.Node) -> bool:
    """Whether ``node``'s bias can absorb its weight rounding's mean output error (Conv, Gemm)."""
    row = POLICY.get(node.op_type)
    return row is not None and row.bias_corrected


def bias_index(node: ir.Node) -> int | None:
    """The input holding ``node``'s bias (quantized int32 with its input and weight), or None."""
    row = POLICY.get(node.op_type)
    return row.bias if row is not None else None


def activation_inputs(node: ir.Node) -> list[ir.Value | None]:
    """The inputs of ``node`` that get Q/DQ pairs."""
    picked = POLICY[node.op_type].activations
    return list(node.inputs) if picked is None else [node.inputs[i] for i in picked if i < len(node.inputs)]


def quantizes_constants(node: ir.Node) -> bool:
    """Whether ``node``'s float constant inputs are quantized per tensor (Add, Mul, Concat)."""
    row = POLICY.get(node.op_type)
    return row is not None and row.constants


def fused_output(node: ir.Node) -> bool:
    """Whether ``node`` runs as an integer kernel only with its output quantized (see :attr:`OpPolicy.fused_output`)."""
    row = of(node)
    return row is not None and row.fused_output


def float_output(node: ir.Node) -> bool:
    """Whether ``node``'s integer kernel can write a float output (QGemm, MatMulIntegerToFloat)."""
    row = of(node)
    return row is not None and row.float_output


def clamp_bounds(node: ir.Node) -> tuple[float, float] | None:
    """(low, high) of an activation a quantizer's clamp can do the work of -- Relu (0, inf), Clip with constant
    bounds -- or None for any other node (or a Clip whose bounds are not constants)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    if len(node.inputs) <= 1 and ("min" in node.attributes or "max" in node.attributes):  # opset < 11
        return attribute(node, "min", float("-inf")), attribute(node, "max", float("inf"))
    bounds = []
    for index, default in ((1, float("-inf")), (2, float("inf"))):
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is None:
            bounds.append(default)
            continue
        array = constant_array(value)
        if array is None or array.size != 1:
            return None
        bounds.append(float(array.reshape(-1)[0]))
    return bounds[0], bounds[1]


def runs_on_int8(node: ir.Node) -> bool:
    """Whether onnxruntime runs ``node`` directly on the int8 tensor once its input and output share a scale and
    zero point (:data:`ON_INT8`: MaxPool, Resize, Slice, Reshape, Transpose, ...)."""
    row = of(node)
    return row is not None and row.quantized and row.kernel == ON_INT8


def carries(node: ir.Node) -> bool:
    """Whether ``node`` only moves data: its output holds its input's values (the mixed-range search follows it)."""
    row = POLICY.get(node.op_type)
    return row is not None and row.output == "carried"


def weight_axes(node: ir.Node, ndim: int) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of ``node``'s weight (input 1), as non-negative axes."""
    row = POLICY.get(node.op_type)
    return (row.weight.axes if row is not None and row.weight is not None else _matmul_axes)(node, ndim)


def storage_axis(node: ir.Node, index: int, ndim: int) -> int | None:
    """The per-channel axis input ``index`` of ``node`` is stored int8 along (float compute); None if it is not
    a weight."""
    row = of(node)
    for weight in row.weights if row is not None else ():
        if weight.applies(node, index, ndim):
            return weight.axes(node, ndim)[0]
    return None
