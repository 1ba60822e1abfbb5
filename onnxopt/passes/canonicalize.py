"""Graph clean-ups before quantization: rewrites to equivalent ops that onnxruntime runs faster in int8.

* :func:`sums_to_adds` -- a two-input ``Sum`` is ``Add``, which has an integer kernel (QLinearAdd); Sum has none.
* :func:`shuffles_to_gathers` -- a channel shuffle (Reshape [N,g,C/g,H,W], Transpose [0,2,1,3,4], Reshape
  [N,C,H,W]) is one ``Gather`` of the permuted channels along axis 1: the same values, copied as whole planes.

* :func:`constant_divisions_to_products` -- ``Sub(x, c)`` is ``Add(x, -c)`` and ``Div(x, c)`` is ``Mul(x, 1/c)``
  for a float constant ``c``: Add and Mul have integer kernels (QLinearAdd, QLinearMul), Sub and Div none. A
  converted HardSwish (``x * Clip(x + 3, 0, 6) / 6``: PaddleOCR's and PicoDet's 94 of them in one detector) ran
  its Div in float between a DequantizeLinear and a QuantizeLinear.

* :func:`spatial_means_to_pools` -- ``ReduceMean`` over every spatial axis of an NCHW tensor is
  ``GlobalAveragePool`` (then a ``Squeeze`` when ``keepdims=0``): QLinearGlobalAveragePool is an integer kernel,
  ReduceMean has none (a squeeze-excitation block written by TF converters ran it in float).
* :func:`pads_into_convs` -- a zero ``Pad`` of the spatial axes read only by a ``Conv`` becomes the Conv's own
  ``pads``: onnxruntime folds it in float models, but between a DequantizeLinear and a QuantizeLinear the Pad ran
  in float on its own. Exact: the integer Conv pads with the zero point, which stands for 0.0.
* :func:`batchnorms_to_depthwise` -- a ``BatchNormalization`` left standing (after a Relu or a pool, where
  fold-bn cannot fold it into a Conv) is a depthwise 1x1 ``Conv`` with one weight and one bias per channel:
  a QLinearConv, where BatchNormalization has no integer kernel (the digits CNN's ran in float between a
  DequantizeLinear and a QuantizeLinear). One weight per channel is exact at its per-channel int8 scale.
* :func:`focus_to_space_to_depth` -- YOLOv5/YOLOX's stem, four strided Slices of the input (each offset of a 2x2
  block) concatenated on channels, is ``SpaceToDepth`` then a ``Gather`` putting the blocks in the Concat's
  order: two data-movement kernels (the SpaceToDepth in float on the model's input -- onnxruntime 1.32 does
  not drop the Q/DQ around one -- the Gather on uint8) where eight Slices and a QLinearConcat ran, as in the
  graph onnxruntime runs for its own quantizer's glyph detector.
* :func:`zero_bounds_to_clamps` -- ``Max(x, 0)`` is ``Relu(x)`` and ``Min(x, c)``/``Max(x, c)`` with a constant
  scalar ``c`` on the right side of 0 is a one-sided ``Clip``: activations the quantizer after a fused op absorbs
  (TF converters write ReLU6 as ``Min(Relu(x), 6)``), where Max and Min have no integer kernel.

All keep the rewritten node's name and output. All but ``Div`` are exact (the same values, bit for bit); ``x *
(1/c)`` differs from ``x / c`` by at most one unit in the last place (none when ``c`` is a power of two), far
below int8 rounding, so the quantize pass asks for it only when it quantizes activations (so too for a mean
that becomes a pool: the same sum, perhaps in another order). They are plain
functions the quantize pass calls first (:mod:`onnxopt.passes.quantize.quantize_qdq`), not a pass of their own:
in a float model none is faster.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import (
    NameSource,
    add_initializer,
    attribute,
    bypass_node,
    constant_array,
    remove_node_and_orphans,
)
from onnxopt.passes.base import PassLog


def canonicalize(log: PassLog, model: ir.Model, *, activations: bool = True) -> NameSource:
    """Every clean-up, in order, on ``model``'s main graph; returns the fresh-name source the rewrites drew from
    (the caller goes on naming with it). ``activations``: the caller quantizes activations, so a Div by a
    constant may become a Mul (off by one ulp at most)."""
    sums_to_adds(log, model.graph)
    names = NameSource(model)
    shuffles_to_gathers(log, model.graph, names)
    constant_divisions_to_products(log, model.graph, names, inexact=False)
    if activations:
        canonicalize_for_integers(log, model, names)
    return names


def canonicalize_for_integers(log: PassLog, model: ir.Model, names: NameSource) -> None:
    """The rewrites that matter only to integer kernels (onnxruntime already folds a Pad into a float Conv, and
    runs a float BatchNormalization or ReduceMean well): after :func:`canonicalize` without ``activations``, the
    rest of it -- Div by a constant off by an ulp, means to pools, Pads into Convs, standing BatchNormalization
    to depthwise Convs, the Focus stem, Max/Min to clamps."""
    constant_divisions_to_products(log, model.graph, names, inexact=True)
    spatial_means_to_pools(log, model.graph, names)
    pads_into_convs(log, model.graph)
    batchnorms_to_depthwise(log, model.graph, names)
    focus_to_space_to_depth(log, model.graph, names)
    zero_bounds_to_clamps(log, model.graph, names)


def zero_bounds_to_clamps(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
    """``Max(x, c)`` with a constant scalar ``c <= 0`` -> ``Clip(x, c)`` (``Relu(x)`` when ``c == 0``); ``Min(x, c)``
    with ``c >= 0`` -> ``Clip(x, -inf, c)``. Either operand order; exact (the same comparisons)."""
    for node in list(graph):
        if node.op_type not in ("Max", "Min") or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        constants = [constant_array(v) for v in node.inputs]
        at = next((i for i, c in enumerate(constants) if c is not None and c.size == 1 and c.dtype.kind == "f"), None)
        x = node.inputs[1 - at] if at is not None else None
        out = node.outputs[0]
        if at is None or x is None or constants[1 - at] is not None or x.shape is None or out.shape != x.shape:
            continue  # a [1, 1] constant could broadcast x to a higher rank: not a clamp of x
        c = float(constants[at].reshape(-1)[0])  # type: ignore[union-attr]
        if (node.op_type == "Max" and c > 0.0) or (node.op_type == "Min" and c < 0.0):
            continue  # the quantizer's clamp could not do it: the range would not hold 0
        base = node.name or node.op_type.lower()
        if node.op_type == "Max" and c == 0.0:
            new = ir.node("Relu", [x], name=node.name)
        else:
            bound = add_initializer(graph, names.fresh(f"{base}_bound"), np.array(c, np.float32))
            new = ir.node("Clip", [x, bound] if node.op_type == "Max" else [x, None, bound], name=node.name)
        graph.insert_before(node, new)
        new.outputs[0].dtype, new.outputs[0].shape = out.dtype, out.shape
        bypass_node(graph, node, new.outputs[0], out, x_now_equals_y=True)
        log.count(f"{node.op_type} with a constant rewritten as {new.op_type}")


def _strided_source(value: ir.Value) -> tuple[ir.Value, dict[int, tuple[int, int]], list[ir.Node]] | None:
    """``value`` as a chain of Slices of one tensor: (that tensor, {axis: (start, step)} of slices to the end,
    the Slices); None for anything else (a Slice with an end short of the axis's end, or read twice)."""
    picks: dict[int, tuple[int, int]] = {}
    chain: list[ir.Node] = []
    while (node := value.producer()) is not None and node.op_type == "Slice" and node.domain in ("", "ai.onnx"):
        if len(value.uses()) != 1 or len(node.inputs) < 4 or node.inputs[0] is None:
            return None
        arrays = [constant_array(v) for v in node.inputs[1:5]]
        if any(a is None for a in arrays[:3]):
            return None
        starts, ends, axes = (a.reshape(-1) for a in arrays[:3])  # type: ignore[union-attr]
        steps = arrays[3].reshape(-1) if len(arrays) > 3 and arrays[3] is not None else np.ones_like(starts)
        source = node.inputs[0]
        rank = len(source.shape) if source.shape is not None else 0
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
            axis = int(axis) % rank if rank else int(axis)
            size = source.shape[axis] if source.shape is not None and rank else None
            reaches_end = int(end) >= 2**30 or (isinstance(size, int) and int(end) >= size)
            if axis in picks or not reaches_end or int(start) < 0:
                return None
            picks[axis] = (int(start), int(step))
        chain.append(node)
        value = source
    return (value, picks, chain) if chain else None


def focus_to_space_to_depth(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
    """``Concat(axis=1)`` of the four ``x[:, :, i::2, j::2]`` (each one Slice or two, in any order) of one rank-4
    ``x`` with a static channel count -> ``Gather(SpaceToDepth(x, blocksize=2), order, axis=1)``: SpaceToDepth
    puts block ``(i, j)`` at channels ``(2 i + j) * C ...``; ``order`` reads them in the Concat's order."""
    for node in list(graph):
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 4:
            continue
        parts = [_strided_source(v) for v in node.inputs if v is not None]
        if len(parts) != 4 or any(p is None for p in parts):
            continue
        x = parts[0][0]  # type: ignore[index]
        shape = x.shape
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or attribute(node, "axis", 0) % 4 != 1:
            continue
        offsets = []
        for source, picks, _ in parts:  # type: ignore[misc]
            if source is not x or set(picks) != {2, 3} or any(step != 2 or start > 1 for start, step in picks.values()):
                break
            offsets.append((picks[2][0], picks[3][0]))
        if len(set(offsets)) != 4:
            continue
        channels = shape[1]
        order = np.array([(2 * i + j) * channels + c for i, j in offsets for c in range(channels)], np.int64)
        base = node.name or "focus"
        blocks = ir.node("SpaceToDepth", [x], attributes={"blocksize": 2}, name=names.fresh(f"{base}/space_to_depth"))
        index = add_initializer(graph, names.fresh(f"{base}_block_order"), order)
        gather = ir.node("Gather", [blocks.outputs[0], index], attributes={"axis": 1}, name=node.name)
        graph.insert_before(node, [blocks, gather])
        out = node.outputs[0]
        blocks.outputs[0].dtype = gather.outputs[0].dtype = out.dtype
        gather.outputs[0].shape = out.shape
        bypass_node(graph, node, gather.outputs[0], out, x_now_equals_y=True)
        for _, _, chain in parts:  # type: ignore[misc]
            for slice_node in chain:
                remove_node_and_orphans(graph, slice_node)
        log.count("strided-Slice stem rewritten as SpaceToDepth")


def batchnorms_to_depthwise(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
    """An inference ``BatchNormalization`` of a rank-4 float tensor with constant parameters -> ``Conv(x, W, B,
    group=C)`` with ``W[c] = scale[c] / sqrt(var[c] + eps)`` (shape [C, 1, 1, 1]) and ``B = bias - mean * W``."""
    for node in list(graph):
        x = node.inputs[0] if node.op_type == "BatchNormalization" and node.inputs else None
        if x is None or node.domain not in ("", "ai.onnx") or len(node.inputs) != 5 or len(node.outputs) != 1:
            continue
        if x.shape is None or len(x.shape) != 4 or x.dtype != ir.DataType.FLOAT or attribute(node, "training_mode", 0):
            continue
        scale, bias, mean, var = (constant_array(v) for v in node.inputs[1:])
        if any(a is None or a.ndim != 1 for a in (scale, bias, mean, var)):
            continue
        eps = float(attribute(node, "epsilon", 1e-5))
        gain = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)  # type: ignore[union-attr]
        shift = bias.astype(np.float64) - mean.astype(np.float64) * gain  # type: ignore[union-attr]
        base = node.name or "batchnorm"
        weight = add_initializer(
            graph, names.fresh(f"{base}_depthwise_weight"), gain.reshape(-1, 1, 1, 1).astype(np.float32)
        )
        offset = add_initializer(graph, names.fresh(f"{base}_depthwise_bias"), shift.astype(np.float32))
        conv = ir.node(
            "Conv", [x, weight, offset], attributes={"group": int(gain.size), "kernel_shape": [1, 1]}, name=node.name
        )
        graph.insert_before(node, conv)
        out = node.outputs[0]
        conv.outputs[0].dtype, conv.outputs[0].shape = out.dtype, out.shape
        bypass_node(graph, node, conv.outputs[0], out, x_now_equals_y=True)
        log.count("BatchNormalization rewritten as a depthwise 1x1 Conv")


def _axes(node: ir.Node) -> list[int] | None:
    """A reduction's constant axes (the attribute before opset 18, the second input from it); None if unknown."""
    if "axes" in node.attributes:
        return [int(a) for a in attribute(node, "axes", [])]
    array = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return None if array is None else [int(a) for a in array.reshape(-1)]


def spatial_means_to_pools(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
    """``ReduceMean(x, axes=[2, 3])`` of a rank-4 float ``x`` -> ``GlobalAveragePool(x)``; with ``keepdims=0``
    followed by ``Squeeze(axes=[2, 3])``. The output keeps its name."""
    for node in list(graph):
        x = node.inputs[0] if node.op_type == "ReduceMean" and node.inputs else None
        if x is None or node.domain not in ("", "ai.onnx") or x.shape is None or len(x.shape) != 4:
            continue
        axes = _axes(node)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3] or x.dtype not in (ir.DataType.FLOAT,):
            continue
        out = node.outputs[0]
        pool = ir.node("GlobalAveragePool", [x], name=node.name)
        graph.insert_before(node, pool)
        result = pool.outputs[0]
        result.dtype, result.shape = out.dtype, ir.Shape([x.shape[0], x.shape[1], 1, 1])
        if not attribute(node, "keepdims", 1):
            squeeze_axes = add_initializer(graph, names.fresh(f"{node.name or 'mean'}_axes"), np.array([2, 3]))
            squeeze = ir.node("Squeeze", [result, squeeze_axes], name=names.fresh(f"{node.name or 'mean'}_squeeze"))
            graph.insert_after(pool, squeeze)
            result = squeeze.outputs[0]
            result.dtype = out.dtype
        result.shape = out.shape
        bypass_node(graph, node, result, out, x_now_equals_y=True)
        log.count("spatial ReduceMean rewritten as GlobalAveragePool")


def pads_into_convs(log: PassLog, graph: ir.Graph) -> None:
    """A ``Pad`` (constant mode, value 0, non-negative pads on the spatial axes only) whose output only a Conv
    with explicit pads reads is removed and its pads added to the Conv's."""
    for pad in list(graph):
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or not pad.inputs or pad.inputs[0] is None:
            continue
        uses = list(pad.outputs[0].uses())
        conv = uses[0].node if len(uses) == 1 and uses[0].idx == 0 else None
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        if attribute(conv, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or pad.outputs[0].is_graph_output():
            continue
        if attribute(pad, "mode", "constant") not in ("constant", b"constant"):
            continue
        amounts = _pad_amounts(pad)
        rank = len(amounts) // 2 if amounts is not None else 0
        if amounts is None or rank < 3 or any(a < 0 for a in amounts):
            continue
        begins, ends = amounts[:rank], amounts[rank:]
        if any(begins[:2]) or any(ends[:2]):  # batch or channels padded: not a Conv's padding
            continue
        spatial = rank - 2
        old = list(attribute(conv, "pads", [0] * (2 * spatial)))
        new = [old[i] + begins[2 + i] for i in range(spatial)]
        new += [old[spatial + i] + ends[2 + i] for i in range(spatial)]
        conv.attributes["pads"] = ir.AttrInt64s("pads", new)
        conv.replace_input_with(0, pad.inputs[0])
        remove_node_and_orphans(graph, pad)
        log.count("Pad folded into the Conv after it")


def _pad_amounts(pad: ir.Node) -> list[int] | None:
    """A zero-valued Pad's constant pads over every axis ([begins..., ends...]); None otherwise (a non-zero value,
    pads or value not constant, or an ``axes`` input)."""
    if "pads" in pad.attributes:  # before opset 11
        if float(attribute(pad, "value", 0.0)) != 0.0:
            return None
        return [int(a) for a in attribute(pad, "pads", [])]
    if len(pad.inputs) < 2 or pad.inputs[1] is None or (len(pad.inputs) > 3 and pad.inputs[3] is not None):
        return None
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        value = constant_array(pad.inputs[2])
        if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
            return None
    amounts = constant_array(pad.inputs[1])
    return None if amounts is None else [int(a) for a in amounts.reshape(-1)]


def constant_divisions_to_products(log: PassLog, graph: ir.Graph, names: NameSource, *, inexact: bool) -> None:
    """``Sub(x, c)`` -> ``Add(x, -c)``; ``Div(x, c)`` -> ``Mul(x, 1/c)`` for a float constant ``c`` with no zero
    (with ``inexact`` only, unless every ``1/c`` is exact: a power of two). ``x`` stays the first input."""
    for node in list(graph):
        if node.op_type not in ("Sub", "Div") or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        c = constant_array(node.inputs[1])
        if c is None or c.dtype.kind != "f" or not np.isfinite(c).all() or node.inputs[0] is None:
            continue
        if node.op_type == "Sub":
            op, value = "Add", -c
        else:
            if (c == 0).any():
                continue
            value = (1.0 / c.astype(np.float64)).astype(c.dtype)
            if not np.isfinite(value).all():  # 1/c beyond the float range (c a subnormal power of two)
                continue
            exact = bool(np.all(np.abs(np.frexp(c)[0]) == 0.5))  # a power of two: its reciprocal is exact
            if not (inexact or exact):
                continue
            op = "Mul"
        constant = add_initializer(graph, names.fresh(f"{node.name or node.op_type}_{op.lower()}_constant"), value)
        new = ir.node(op, [node.inputs[0], constant], name=node.name)
        graph.insert_before(node, new)
        out = node.outputs[0]
        new.outputs[0].dtype, new.outputs[0].shape = out.dtype, out.shape
        bypass_node(graph, node, new.outputs[0], out, x_now_equals_y=True)
        log.count(f"{node.op_type} by a constant rewritten as {op}")


def sums_to_adds(log: PassLog, graph: ir.Graph) -> None:
    """Two-input Sum is Add, which has an integer kernel (QLinearAdd); Sum has none."""
    for node in list(graph):
        if node.op_type == "Sum" and node.domain == "" and len(node.inputs) == 2:
            add = ir.node("Add", list(node.inputs), name=node.name)
            graph.insert_before(node, add)
            out, new = node.outputs[0], add.outputs[0]
            new.dtype, new.shape = out.dtype, out.shape
            bypass_node(graph, node, new, out, x_now_equals_y=True)
            log.count("Sum rewritten as Add")


def shuffles_to_gathers(log: PassLog, graph: ir.Graph, names: NameSource) -> None:
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
        index = add_initializer(graph, names.fresh(f"{out.name or 'shuffle'}_channel_order"), order.astype(np.int64))
        gather = ir.node("Gather", [x, index], attributes={"axis": 1}, name=node.name)
        graph.insert_before(node, gather)
        gather.outputs[0].dtype, gather.outputs[0].shape = out.dtype, out.shape
        bypass_node(graph, node, gather.outputs[0], out, x_now_equals_y=True)
        remove_node_and_orphans(graph, transpose)
        remove_node_and_orphans(graph, first)
        log.count("channel shuffles rewritten as Gather")
