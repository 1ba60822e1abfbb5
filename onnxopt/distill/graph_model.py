"""A trainable TensorFlow twin of an ONNX graph: the same computation, its weights as ``tf.Variable``.

Why hand-written: onnx2tf (the maintained ONNX -> TF converter) pins numpy
1.26, onnx 1.19, onnxruntime 1.23 and tensorflow 2.19, which would downgrade
the whole dependency set; onnx2torch needs PyTorch. The twin needs no
conversion of the graph at all: :class:`GraphModel` walks the ONNX nodes in
order and calls one TensorFlow function per op, on NCHW tensors exactly as
ONNX defines them (Conv, pooling and Resize transpose to NHWC around the TF
kernel, which CPUs only have in that layout). So every tensor keeps its ONNX
name and shape, and write-back is a copy of each variable into the
initializer it came from.

Trainable: the float initializers that Conv/ConvTranspose (weight, bias),
Gemm (B, C), MatMul (a constant operand), BatchNormalization (scale, bias),
PRelu (slope) and LSTM (W, R, B) read. Every other constant stays a constant.
BatchNormalization runs with its stored statistics (inference form).

QDQ graphs: QuantizeLinear/DequantizeLinear compute onnxruntime's integers
(:mod:`onnxopt.distill.fake_quant`). With ``train_quantized``, the integer constants
DequantizeLinear reads (int8 weights, int32 biases) train as float shadows fake-quantized to
their levels, and with ``learn_scales`` the quantizers' scales train too (quantization-aware
fine-tuning, :mod:`onnxopt.distill.qat`).

Ops: Conv/ConvTranspose (2-D and 1-D, any group, explicit or auto pads),
BatchNormalization, Gemm, MatMul, Add/Sub/Mul/Div/Pow/Min/Max, Neg/Abs/Sqrt/Exp/Log/Erf/Reciprocal,
Relu/Clip/LeakyRelu/PRelu/Sigmoid/HardSigmoid/HardSwish/Tanh/Softplus/Elu,
Softmax/LogSoftmax, MaxPool/AveragePool/GlobalAveragePool/GlobalMaxPool,
Concat/Split/Slice/Gather, Reshape/Flatten/Transpose/Squeeze/Unsqueeze/Expand,
Resize/Upsample (nearest and linear, every coordinate mode),
Shape/ConstantOfShape/Cast/Constant/Identity/Dropout, ReduceMean/ReduceSum/ReduceMax, LSTM,
QuantizeLinear/DequantizeLinear.
Anything else raises :class:`UnsupportedOp` naming the op; :func:`check_against`
compares the twin with onnxruntime on data before anyone trains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.distill import fake_quant
from onnxopt.errors import UnsupportedOp, one_line

#: input positions of each op that hold trainable weights (when they are float initializers)
TRAINABLE_INPUTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
    "LSTM": (1, 2, 3),
}


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _str(value: object, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


class GraphModel:
    """``model(feeds)`` -> {output name: tf.Tensor}; ``variables`` hold the trainable initializers."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        *,
        only: set[str] | None = None,
        train_quantized: bool = False,
        learn_scales: bool = True,
    ) -> None:
        """``only``: train just these initializers (names); the other weights stay constants. ``train_quantized``:
        train the integer constants DequantizeLinear reads as fake-quantized shadows (and, with ``learn_scales``,
        the quantizers' scales)."""
        from onnxopt.convert import tf_import

        self.tf = tf_import.tensorflow()
        self.proto = proto
        graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        unknown = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS})
        if unknown:
            raise UnsupportedOp(f"fine-tuning cannot run op(s) {', '.join(unknown)} (the trainable twin lacks them)")
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        trainable = {
            node.input[i]
            for node in graph.node
            for i in TRAINABLE_INPUTS.get(node.op_type, ())
            if i < len(node.input) and node.input[i] in initializers and initializers[node.input[i]].dtype == np.float32
        }
        if only is not None:
            trainable &= set(only)
        self.variables = {
            name: self.tf.Variable(initializers[name], name=_safe(name), trainable=True) for name in sorted(trainable)
        }
        #: the shadows and learned scales of a quantized graph trained as one (None: its integers stay constants)
        self.quant = (
            fake_quant.FakeQuant(self.tf, graph, initializers, learn_scales=learn_scales) if train_quantized else None
        )
        if self.quant is not None:
            self.variables = dict(sorted({**self.variables, **self.quant.variables}.items()))
        self.constants = {
            name: self.tf.constant(array) for name, array in initializers.items() if name not in self.variables
        }
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]
        producers = {out: node for node in graph.node for out in node.output}
        #: outputs computed by a Softmax: training uses the Softmax's input (the logits) for them
        self.logits_of = {
            name: producers[name].input[0] for name in self.output_names
            if name in producers and producers[name].op_type == "Softmax"
        }  # fmt: skip

    @property
    def trainable(self) -> list:
        return list(self.variables.values())

    def __call__(
        self, feeds: dict[str, np.ndarray], keep: Iterable[str] = (), given: dict[str, np.ndarray] | None = None
    ) -> dict[str, object]:
        """The graph outputs (and the tensors named in ``keep``) for ``feeds``. ``given`` replaces those tensors
        once computed: what reads them reads the given values, and ``keep`` returns what the twin computed."""
        tf = self.tf
        values: dict[str, object] = {"": None}
        computed: dict[str, object] = {}
        values.update(self.constants)
        values.update(self.variables)
        for name in self.input_names:
            values[name] = tf.convert_to_tensor(feeds[name])
        for node in self.proto.graph.node:
            inputs = [values[name] if name else None for name in node.input]
            try:
                outputs = _OPS[node.op_type](self, node, inputs, _attrs(node))
            except UnsupportedOp:
                raise
            except Exception as e:  # a TF kernel refusing a shape or type: name the node
                raise UnsupportedOp(
                    f"fine-tuning: {node.op_type} node {node.name or node.output[0]!r} failed in TensorFlow: "
                    f"{one_line(e, 160)}"
                ) from e
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            for name, value in zip(node.output, outputs, strict=False):
                if name:
                    values[name] = value
                    if given is not None and name in given:
                        computed[name] = value
                        values[name] = tf.convert_to_tensor(given[name])
        wanted = list(self.output_names) + [k for k in keep if k not in self.output_names]
        return {name: computed.get(name, values[name]) for name in wanted}

    def weights(self) -> dict[str, np.ndarray]:
        """Every trainable initializer's current value."""
        return {name: v.numpy() for name, v in self.variables.items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name) or "w"


def check_against(
    model: GraphModel, runner_outputs: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    feeds: dict[str, np.ndarray], tolerance: float = 1e-3,
) -> float:  # fmt: skip
    """The worst relative max error of the twin against onnxruntime on ``feeds``; raises :class:`UnsupportedOp`
    when it is above ``tolerance`` (the twin would train something other than the model)."""
    expected = runner_outputs(feeds)
    got = model(feeds)
    worst = 0.0
    for name, reference in zip(model.output_names, expected, strict=True):
        value = np.asarray(got[name])
        reference = np.asarray(reference)
        if value.shape != reference.shape:
            raise UnsupportedOp(
                f"fine-tuning: the trainable twin gives {name} shape {value.shape}, onnxruntime {reference.shape}"
            )
        if reference.dtype.kind != "f":
            continue
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        error = (
            float(np.max(np.abs(value.astype(np.float64) - reference))) / max(scale, 1e-6) if reference.size else 0.0
        )
        worst = max(worst, error)
    if worst > tolerance:
        raise UnsupportedOp(
            f"fine-tuning: the trainable twin differs from onnxruntime by {worst:.2e} of the output range "
            f"(> {tolerance:g})"
        )
    return worst


# ---------------------------------------------------------------------- ops

_OPS: dict[str, Callable] = {}


def _op(*names: str):
    def register(fn: Callable) -> Callable:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def _static(x) -> np.ndarray:
    """A tensor whose value the graph needs to know (shapes, axes): as numpy."""
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _to_nhwc(tf, x):
    return tf.transpose(x, [0, *range(2, len(x.shape)), 1])


def _to_nchw(tf, x):
    rank = len(x.shape)
    return tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])


def _spatial_pads(node_attrs: dict, in_sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]):
    """Explicit (begin, end) pads per spatial axis, auto_pad resolved."""
    auto = _str(node_attrs.get("auto_pad"), "NOTSET")
    rank = len(in_sizes)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return pads
    if auto == "VALID":
        return [(0, 0)] * rank
    flat = list(node_attrs.get("pads", [0] * (2 * rank)))
    return [(flat[i], flat[i + rank]) for i in range(rank)]


_OPS["QuantizeLinear"] = fake_quant.quantize_linear
_OPS["DequantizeLinear"] = fake_quant.dequantize_linear


@_op("Conv")
def _conv(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x, w = inputs[0], inputs[1]
    w_shape = [int(d) for d in w.shape]
    one_d = len(w_shape) == 3
    if one_d:  # [N, C, L] as [N, C, 1, L]
        x, w = tf.expand_dims(x, 2), tf.expand_dims(w, 2)
        w_shape = [w_shape[0], w_shape[1], 1, w_shape[2]]
    if len(w_shape) != 4:
        raise UnsupportedOp(f"fine-tuning: Conv {node.name!r} is {len(w_shape) - 2}-D (1-D and 2-D are supported)")
    kernel = w_shape[2:]
    lift = (lambda v, fill: [fill, *v]) if one_d else (lambda v, fill: v)
    strides = lift(list(attrs.get("strides", [1] * (len(kernel) - one_d))), 1)
    dilations = lift(list(attrs.get("dilations", [1] * (len(kernel) - one_d))), 1)
    group = int(attrs.get("group", 1))
    local = dict(attrs)
    if one_d and "pads" in attrs:
        p = list(attrs["pads"])
        local["pads"] = [0, p[0], 0, p[1]]
    pads = _spatial_pads(local, [int(d) for d in x.shape[2:]], kernel, strides, dilations)
    h = tf.pad(_to_nhwc(tf, x), [[0, 0], *pads, [0, 0]])
    channels = int(x.shape[1])
    filt = tf.transpose(w, [2, 3, 1, 0])  # [kh, kw, C/g, O]
    if group == 1:
        y = tf.nn.conv2d(h, filt, [1, *strides, 1], "VALID", dilations=dilations)
    elif group == channels and w_shape[1] == 1 and strides[0] == strides[1]:
        multiplier = w_shape[0] // channels
        depth = tf.reshape(tf.transpose(w, [2, 3, 1, 0]), [*kernel, channels, multiplier])
        y = tf.nn.depthwise_conv2d(h, depth, [1, *strides, 1], "VALID", dilations=dilations)
    else:
        xs = tf.split(h, group, axis=3)
        fs = tf.split(filt, group, axis=3)
        y = tf.concat([tf.nn.conv2d(a, f, [1, *strides, 1], "VALID", dilations=dilations)
                       for a, f in zip(xs, fs, strict=True)], axis=3)  # fmt: skip
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + inputs[2]
    y = _to_nchw(tf, y)
    return tf.squeeze(y, 2) if one_d else y


@_op("ConvTranspose")
def _conv_transpose(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x, w = inputs[0], inputs[1]  # w: [C_in, C_out/g, kh, kw]
    if len(w.shape) != 4 or int(attrs.get("group", 1)) != 1:
        raise UnsupportedOp(f"fine-tuning: ConvTranspose {node.name!r} must be 2-D with group 1")
    if _str(attrs.get("auto_pad"), "NOTSET") != "NOTSET" or "output_shape" in attrs:
        raise UnsupportedOp(f"fine-tuning: ConvTranspose {node.name!r} with auto_pad/output_shape")
    kh, kw = int(w.shape[2]), int(w.shape[3])
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    oph, opw = attrs.get("output_padding", [0, 0])
    _n, _, hh, ww = (int(d) if d is not None else -1 for d in x.shape)
    full_h = (hh - 1) * sh + (kh - 1) * dh + 1 + oph
    full_w = (ww - 1) * sw + (kw - 1) * dw + 1 + opw
    filt = tf.transpose(w, [2, 3, 1, 0])  # [kh, kw, C_out, C_in]
    batch = tf.shape(x)[0]
    y = tf.nn.conv2d_transpose(
        _to_nhwc(tf, x),
        filt,
        tf.stack([batch, full_h, full_w, int(w.shape[1])]),
        [1, sh, sw, 1],
        "VALID",
        dilations=[1, dh, dw, 1],
    )
    y = y[:, top : full_h - bottom, left : full_w - right, :]
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + inputs[2]
    return _to_nchw(tf, y)


def _channel_shape(x) -> list[int]:
    """Broadcast shape of a per-channel vector against NC... ``x``."""
    return [1, -1, *([1] * (len(x.shape) - 2))]


@_op("BatchNormalization")
def _batchnorm(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x, scale, bias, mean, var = inputs[:5]
    shape = _channel_shape(x)
    eps = float(attrs.get("epsilon", 1e-5))
    factor = tf.reshape(scale, shape) * tf.math.rsqrt(tf.reshape(var, shape) + eps)
    return (x - tf.reshape(mean, shape)) * factor + tf.reshape(bias, shape)


@_op("Gemm")
def _gemm(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = tf.transpose(a)
    if attrs.get("transB", 0):
        b = tf.transpose(b)
    y = float(attrs.get("alpha", 1.0)) * tf.matmul(a, b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + float(attrs.get("beta", 1.0)) * inputs[2]
    return y


@_op("MatMul")
def _matmul(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    a, b = inputs
    if len(a.shape) == 1:
        return tf.squeeze(tf.matmul(tf.expand_dims(a, 0), b), -2)
    if len(b.shape) == 1:
        return tf.squeeze(tf.matmul(a, tf.expand_dims(b, -1)), -1)
    return tf.linalg.matmul(a, b)


def _binary(fn_name: str):
    def op(m: GraphModel, node, inputs, attrs):
        a, b = inputs
        if a.dtype != b.dtype:
            b = m.tf.cast(b, a.dtype)
        return getattr(m.tf.math, fn_name)(a, b)

    return op


for _name, _fn in {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Pow": "pow", "Equal": "equal",
                   "Less": "less", "Greater": "greater"}.items():  # fmt: skip
    _OPS[_name] = _binary(_fn)


@_op("Div")
def _div(m: GraphModel, node, inputs, attrs):
    a, b = inputs
    if a.dtype.is_integer:
        return m.tf.math.truncatediv(a, m.tf.cast(b, a.dtype))
    return a / m.tf.cast(b, a.dtype)


@_op("Min", "Max", "Sum", "Mean")
def _variadic(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    fn = {"Min": tf.minimum, "Max": tf.maximum, "Sum": tf.add, "Mean": tf.add}[node.op_type]
    out = inputs[0]
    for x in inputs[1:]:
        out = fn(out, x)
    return out / len(inputs) if node.op_type == "Mean" else out


def _unary(fn: Callable[[object, object], object]):
    return lambda m, node, inputs, attrs: fn(m.tf, inputs[0])


_OPS.update({
    "Relu": _unary(lambda tf, x: tf.nn.relu(x)),
    "Sigmoid": _unary(lambda tf, x: tf.sigmoid(x)),
    "Tanh": _unary(lambda tf, x: tf.tanh(x)),
    "Neg": _unary(lambda tf, x: -x),
    "Abs": _unary(lambda tf, x: tf.abs(x)),
    "Sqrt": _unary(lambda tf, x: tf.sqrt(x)),
    "Exp": _unary(lambda tf, x: tf.exp(x)),
    "Log": _unary(lambda tf, x: tf.math.log(x)),
    "Erf": _unary(lambda tf, x: tf.math.erf(x)),
    "Reciprocal": _unary(lambda tf, x: 1.0 / x),
    "Softplus": _unary(lambda tf, x: tf.nn.softplus(x)),
    "HardSwish": _unary(lambda tf, x: x * tf.clip_by_value(x / 6.0 + 0.5, 0.0, 1.0)),
    "Identity": _unary(lambda tf, x: tf.identity(x)),
    "Dropout": _unary(lambda tf, x: tf.identity(x)),
    "Floor": _unary(lambda tf, x: tf.floor(x)),
    "Ceil": _unary(lambda tf, x: tf.math.ceil(x)),
    "Not": _unary(lambda tf, x: tf.logical_not(x)),
})  # fmt: skip


@_op("Elu")
def _elu(m, node, inputs, attrs):
    x, alpha = inputs[0], float(attrs.get("alpha", 1.0))
    return m.tf.where(x > 0, x, alpha * (m.tf.exp(x) - 1.0))


@_op("LeakyRelu")
def _leaky(m, node, inputs, attrs):
    return m.tf.nn.leaky_relu(inputs[0], float(attrs.get("alpha", 0.01)))


@_op("PRelu")
def _prelu(m, node, inputs, attrs):
    x, slope = inputs
    return m.tf.where(x >= 0, x, x * slope)


@_op("HardSigmoid")
def _hard_sigmoid(m, node, inputs, attrs):
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    return m.tf.clip_by_value(alpha * inputs[0] + beta, 0.0, 1.0)


@_op("Clip")
def _clip(m, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    if low is not None:
        x = tf.maximum(x, tf.cast(low, x.dtype))
    if high is not None:
        x = tf.minimum(x, tf.cast(high, x.dtype))
    return x


def _softmax_axis(m: GraphModel, attrs, rank: int) -> int:
    default = -1 if m.opset >= 13 else 1
    axis = int(attrs.get("axis", default))
    return axis % rank


@_op("Softmax", "LogSoftmax")
def _softmax(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    rank = len(x.shape)
    axis = _softmax_axis(m, attrs, rank)
    fn = tf.nn.softmax if node.op_type == "Softmax" else tf.nn.log_softmax
    if m.opset >= 13 or axis == rank - 1:
        return fn(x, axis=axis)
    shape = tf.shape(x)  # before opset 13: softmax over everything from ``axis`` on, flattened
    flat = tf.reshape(x, tf.stack([tf.reduce_prod(shape[:axis]), -1]))
    return tf.reshape(fn(flat, axis=1), shape)


def _pool_geometry(attrs, x):
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    if any(d != 1 for d in dilations):
        raise UnsupportedOp("fine-tuning: dilated pooling")
    sizes = [int(d) for d in x.shape[2:]]
    pads = _spatial_pads(attrs, sizes, kernel, strides, dilations)
    if attrs.get("ceil_mode", 0):
        extra = []
        for size, k, s, (b, e) in zip(sizes, kernel, strides, pads, strict=True):
            floor_out = (size + b + e - k) // s + 1
            ceil_out = -(-(size + b + e - k) // s) + 1
            if (ceil_out - 1) * s >= size + b:  # the last window must start inside the input or its begin pad
                ceil_out -= 1
            extra.append(max(0, (ceil_out - floor_out) * s))
        pads = [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)]
    return kernel, strides, pads


@_op("MaxPool")
def _max_pool(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOp("fine-tuning: MaxPool with an Indices output")
    kernel, strides, pads = _pool_geometry(attrs, x)
    h = tf.pad(_to_nhwc(tf, x), [[0, 0], *pads, [0, 0]], constant_values=-np.inf)
    return _to_nchw(tf, tf.nn.max_pool(h, kernel, strides, "VALID"))


@_op("AveragePool")
def _avg_pool(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    kernel, strides, pads = _pool_geometry(attrs, x)
    h = tf.pad(_to_nhwc(tf, x), [[0, 0], *pads, [0, 0]])
    sums = tf.nn.avg_pool(h, kernel, strides, "VALID") * float(np.prod(kernel))
    if attrs.get("count_include_pad", 0):
        return _to_nchw(tf, sums / float(np.prod(kernel)))
    ones = tf.pad(tf.ones([1, *[int(d) for d in x.shape[2:]], 1], x.dtype), [[0, 0], *pads, [0, 0]])
    counts = tf.nn.avg_pool(ones, kernel, strides, "VALID") * float(np.prod(kernel))
    return _to_nchw(tf, sums / counts)


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(m: GraphModel, node, inputs, attrs):
    x = inputs[0]
    axes = list(range(2, len(x.shape)))
    fn = m.tf.reduce_mean if node.op_type == "GlobalAveragePool" else m.tf.reduce_max
    return fn(x, axis=axes, keepdims=True)


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    if len(inputs) > 1 and inputs[1] is not None:
        axes = [int(a) for a in _static(inputs[1]).reshape(-1)]
    else:
        axes = list(attrs.get("axes", []))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(len(x.shape)))
    fn = {"ReduceMean": tf.reduce_mean, "ReduceSum": tf.reduce_sum, "ReduceMax": tf.reduce_max,
          "ReduceMin": tf.reduce_min}[node.op_type]  # fmt: skip
    return fn(x, axis=axes, keepdims=bool(attrs.get("keepdims", 1)))


@_op("Concat")
def _concat(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    parts = [x for x in inputs if x is not None]
    dtype = parts[0].dtype
    return tf.concat([tf.cast(p, dtype) for p in parts], axis=int(attrs["axis"]))


@_op("Split")
def _split(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    axis = int(attrs.get("axis", 0))
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = [int(s) for s in _static(inputs[1])]
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        parts = int(attrs.get("num_outputs", len(node.output)))
        total = int(x.shape[axis])
        each = -(-total // parts)
        sizes = [min(each, total - i * each) for i in range(parts)]
    return tf.split(x, sizes, axis=axis)


@_op("Slice")
def _slice(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    if m.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = [int(v) for v in _static(inputs[1])], [int(v) for v in _static(inputs[2])]
        axes = (
            [int(v) for v in _static(inputs[3])]
            if len(inputs) > 3 and inputs[3] is not None
            else list(range(len(starts)))
        )
        steps = [int(v) for v in _static(inputs[4])] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    rank = len(x.shape)
    index = [slice(None)] * rank
    dims = tf.shape(x)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= rank
        size = int(x.shape[axis]) if x.shape[axis] is not None else int(dims[axis])
        begin, stop, _ = slice(start, end, step).indices(size)
        if step < 0 and stop < 0:
            stop = None
        index[axis] = slice(begin, stop, step)
    return x[tuple(index)]


@_op("Gather")
def _gather(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x, indices = inputs
    axis = int(attrs.get("axis", 0)) % len(x.shape)
    size = tf.cast(tf.shape(x)[axis], indices.dtype)
    indices = tf.where(indices < 0, indices + size, indices)
    return tf.gather(x, indices, axis=axis)


@_op("Reshape")
def _reshape(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    shape = [int(v) for v in _static(inputs[1])]
    if not attrs.get("allowzero", 0):
        current = tf.shape(x)
        shape = [int(current[i]) if v == 0 else v for i, v in enumerate(shape)]
    return tf.reshape(x, shape)


def _dims(tf, x) -> list:
    """``x``'s dimensions: Python ints where the static shape knows them, else dynamic scalars."""
    dynamic = tf.shape(x)
    return [int(d) if d is not None else dynamic[i] for i, d in enumerate(x.shape)]


@_op("SpaceToDepth")
def _space_to_depth(m: GraphModel, node, inputs, attrs):
    """ONNX's NCHW SpaceToDepth: ``y[n, (i * b + j) * C + c, h, w] = x[n, c, h * b + i, w * b + j]``."""
    tf, b = m.tf, int(attrs["blocksize"])
    n, c, h, w = _dims(tf, inputs[0])
    t = tf.reshape(inputs[0], [n, c, h // b, b, w // b, b])
    return tf.reshape(tf.transpose(t, [0, 3, 5, 1, 2, 4]), [n, c * b * b, h // b, w // b])


@_op("DepthToSpace")
def _depth_to_space(m: GraphModel, node, inputs, attrs):
    """ONNX's NCHW DepthToSpace, ``mode`` DCR (depth, column, row: the default) or CRD."""
    tf, b = m.tf, int(attrs["blocksize"])
    n, c, h, w = _dims(tf, inputs[0])
    mode = attrs.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "CRD":
        t = tf.transpose(tf.reshape(inputs[0], [n, c // (b * b), b, b, h, w]), [0, 1, 4, 2, 5, 3])
    else:
        t = tf.transpose(tf.reshape(inputs[0], [n, b, b, c // (b * b), h, w]), [0, 3, 4, 1, 5, 2])
    return tf.reshape(t, [n, c // (b * b), h * b, w * b])


@_op("Flatten")
def _flatten(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    axis = int(attrs.get("axis", 1)) % max(len(x.shape), 1)
    shape = tf.shape(x)
    return tf.reshape(x, tf.stack([tf.reduce_prod(shape[:axis]), tf.reduce_prod(shape[axis:])]))


@_op("Transpose")
def _transpose(m: GraphModel, node, inputs, attrs):
    x = inputs[0]
    perm = list(attrs.get("perm", reversed(range(len(x.shape)))))
    return m.tf.transpose(x, perm)


def _axes(inputs, attrs) -> list[int] | None:
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in _static(inputs[1]).reshape(-1)]
    return list(attrs["axes"]) if "axes" in attrs else None


@_op("Squeeze")
def _squeeze(m: GraphModel, node, inputs, attrs):
    axes = _axes(inputs, attrs)
    return m.tf.squeeze(inputs[0], axis=axes)


@_op("Unsqueeze")
def _unsqueeze(m: GraphModel, node, inputs, attrs):
    x = inputs[0]
    axes = sorted(a % (len(x.shape) + len(_axes(inputs, attrs))) for a in _axes(inputs, attrs))
    for axis in axes:
        x = m.tf.expand_dims(x, axis)
    return x


@_op("Expand")
def _expand(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x, shape = inputs[0], [int(v) for v in _static(inputs[1])]
    target = tf.broadcast_dynamic_shape(tf.shape(x), tf.constant(shape, tf.int32))
    return tf.broadcast_to(x, target)


@_op("Shape")
def _shape(m: GraphModel, node, inputs, attrs):
    shape = m.tf.shape(inputs[0], out_type=m.tf.int64)
    rank = len(inputs[0].shape)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    return shape[slice(start % (rank + 1) if start < 0 else start, None if end is None else int(end))]


@_op("ConstantOfShape")
def _constant_of_shape(m: GraphModel, node, inputs, attrs):
    value = attrs.get("value")
    array = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    shape = [int(v) for v in _static(inputs[0])]
    return m.tf.fill(shape, m.tf.constant(array.reshape(-1)[0]))


@_op("Constant")
def _constant(m: GraphModel, node, inputs, attrs):
    if "value" in attrs:
        return m.tf.constant(numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return m.tf.constant(np.asarray(attrs[key], dtype))
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return m.tf.constant(np.asarray(list(attrs[key]), dtype))
    raise UnsupportedOp(f"fine-tuning: Constant {node.name!r} of a kind the twin does not read")


@_op("Cast")
def _cast(m: GraphModel, node, inputs, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"]))
    return m.tf.cast(inputs[0], m.tf.as_dtype(dtype))


def _source_coordinates(mode: str, out_size: int, in_size: int, scale: float) -> np.ndarray:
    """Where each output index samples the input, per ONNX Resize's coordinate_transformation_mode."""
    x = np.arange(out_size, dtype=np.float64)
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    if mode in ("half_pixel", "half_pixel_symmetric"):
        if mode == "half_pixel_symmetric":
            adjustment = out_size / (scale * in_size)
            center = in_size / 2
            offset = center * (1 - adjustment)
            return offset + (x + 0.5) / scale - 0.5
        return (x + 0.5) / scale - 0.5
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise UnsupportedOp(f"fine-tuning: Resize coordinate_transformation_mode {mode}")


def _nearest(coords: np.ndarray, mode: str, in_size: int) -> np.ndarray:
    if mode == "floor":
        index = np.floor(coords)
    elif mode == "ceil":
        index = np.ceil(coords)
    elif mode == "round_prefer_ceil":
        index = np.floor(coords + 0.5)
    else:  # round_prefer_floor (the default)
        index = np.ceil(coords - 0.5)
    return np.clip(index, 0, in_size - 1).astype(np.int64)


@_op("Resize", "Upsample")
def _resize(m: GraphModel, node, inputs, attrs):
    tf = m.tf
    x = inputs[0]
    rank = len(x.shape)
    in_sizes = [int(d) for d in x.shape]
    scales, sizes = None, None
    if node.op_type == "Upsample" or m.opset < 11:
        scales = [float(s) for s in (_static(inputs[1]) if len(inputs) > 1 else attrs["scales"])]
    else:
        if len(inputs) > 3 and inputs[3] is not None and int(np.prod(inputs[3].shape)) > 0:
            sizes = [int(s) for s in _static(inputs[3])]
        elif len(inputs) > 2 and inputs[2] is not None and int(np.prod(inputs[2].shape)) > 0:
            scales = [float(s) for s in _static(inputs[2])]
    if sizes is None:
        assert scales is not None
        sizes = [math.floor(n * s) for n, s in zip(in_sizes, scales, strict=True)]
    if scales is None:
        scales = [o / n for o, n in zip(sizes, in_sizes, strict=True)]
    mode = _str(attrs.get("mode"), "nearest")
    default_transform = "asymmetric" if m.opset < 11 else "half_pixel"
    transform = _str(attrs.get("coordinate_transformation_mode"), default_transform)
    nearest_mode = _str(attrs.get("nearest_mode"), "round_prefer_floor")
    if _str(attrs.get("keep_aspect_ratio_policy"), "stretch") != "stretch" or attrs.get("antialias", 0):
        raise UnsupportedOp("fine-tuning: Resize with keep_aspect_ratio_policy or antialias")
    y = x
    for axis in range(rank):
        if sizes[axis] == in_sizes[axis] and scales[axis] == 1.0:
            continue
        coords = _source_coordinates(transform, sizes[axis], in_sizes[axis], scales[axis])
        if mode == "nearest":
            y = tf.gather(y, _nearest(coords, nearest_mode, in_sizes[axis]), axis=axis)
        elif mode == "linear":
            clipped = np.clip(coords, 0, in_sizes[axis] - 1)
            low = np.floor(clipped).astype(np.int64)
            high = np.minimum(low + 1, in_sizes[axis] - 1)
            frac = (clipped - low).astype(np.float32)
            shape = [1] * rank
            shape[axis] = -1
            weight = tf.reshape(tf.constant(frac), shape)
            y = tf.gather(y, low, axis=axis) * (1 - weight) + tf.gather(y, high, axis=axis) * weight
        else:
            raise UnsupportedOp(f"fine-tuning: Resize mode {mode}")
    return y


@_op("LSTM")
def _lstm(m: GraphModel, node, inputs, attrs):
    """ONNX LSTM (gates i, o, f, c; default activations; layout 0): Y [T, dirs, N, H], Y_h, Y_c."""
    tf = m.tf
    if attrs.get("layout", 0) or "activations" in attrs or attrs.get("input_forget", 0) or "clip" in attrs:
        raise UnsupportedOp(f"fine-tuning: LSTM {node.name!r} with layout, activations, clip or input_forget")
    if len(inputs) > 4 and inputs[4] is not None:
        raise UnsupportedOp(f"fine-tuning: LSTM {node.name!r} with sequence_lens")
    if len(inputs) > 7 and inputs[7] is not None:
        raise UnsupportedOp(f"fine-tuning: LSTM {node.name!r} with peepholes")
    x, w, r = inputs[0], inputs[1], inputs[2]
    b = inputs[3] if len(inputs) > 3 else None
    hidden = int(attrs["hidden_size"])
    direction = _str(attrs.get("direction"), "forward")
    directions = 2 if direction == "bidirectional" else 1
    steps = int(x.shape[0]) if x.shape[0] is not None else int(tf.shape(x)[0])
    batch = tf.shape(x)[1]
    outputs, last_h, last_c = [], [], []
    for d in range(directions):
        h = inputs[5][d] if len(inputs) > 5 and inputs[5] is not None else tf.zeros(tf.stack([batch, hidden]), x.dtype)
        c = inputs[6][d] if len(inputs) > 6 and inputs[6] is not None else tf.zeros(tf.stack([batch, hidden]), x.dtype)
        bias = (b[d][: 4 * hidden] + b[d][4 * hidden :]) if b is not None else 0.0
        projected = tf.einsum("tni,gi->tng", x, w[d]) + bias  # [T, N, 4H]: the input part of every step at once
        reverse = direction == "reverse" or d == 1
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        ys = [None] * steps
        for t in order:
            gates = projected[t] + tf.matmul(h, r[d], transpose_b=True)
            i, o, f, g = tf.split(gates, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            ys[t] = h
        outputs.append(tf.stack(ys))
        last_h.append(h)
        last_c.append(c)
    return tf.stack(outputs, axis=1), tf.stack(last_h), tf.stack(last_c)
