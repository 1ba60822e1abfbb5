"""Training batches in the model's own layout: a graph exported for one sample made to carry a batch.

A YOLOX export (the suite's glyph detector) reshapes with the constant ``[1, 6, -1]``. Run batch-free on ``B``
samples, its output comes out as one ``[1, B * A, 6]`` array whose rows mix samples with channels. Training
compared student and teacher position by position, so it trained; but a loss that knows what a column means
(:mod:`onnxopt.distill.detection_loss`: objectness, class scores, boxes) and a meter that reads detections need
each sample in its own row.

:func:`batched` rewrites such a graph so that ``B`` samples come out as ``B`` rows: each input's fixed leading
1 becomes symbolic, and each Reshape whose constant shape starts with 1 reads 0 there instead (ONNX: copy
the input's leading dimension, the batch). :func:`confirmed_batched` keeps the rewrite only where onnxruntime
confirms it on data -- the rewritten graph on two samples gives what the original gives on each sample alone,
stacked on the axis where its output has the 1 -- and returns None otherwise (a Reshape whose leading 1 is
not the batch, a fixed batch held elsewhere): the caller then trains as before and reads one sample at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import ModelRunError, UnsupportedModelError
from onnxopt.runtime import Runner

#: suffix of the shape constants the rewrite adds (the original's stay, for any other reader)
SUFFIX = "__batched"
#: the rewrite must reproduce the per-sample outputs to this fraction of each output's range
TOLERANCE = 1e-4


def fixed_batch_one(proto: onnx.ModelProto) -> bool:
    """Whether an input of ``proto`` (not an initializer) has a fixed leading dimension of 1."""
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            return True
    return False


def batched(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose fixed leading-1 inputs are symbolic and whose Reshapes with a constant shape
    starting with 1 (``allowzero`` off) copy the input's leading dimension instead; unconfirmed (see
    :func:`confirmed_batched`). Deterministic: the same graph gives the same bytes."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
    constants = {
        n.output[0]: numpy_helper.to_array(a.t)
        for n in graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    added: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.domain not in ("", "ai.onnx"):
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        name = node.input[1]
        shape = numpy_helper.to_array(initializers[name]) if name in initializers else constants.get(name)
        if shape is None or shape.ndim != 1 or not shape.size or int(shape[0]) != 1:
            continue
        if name not in added:
            copied = np.array(shape, np.int64)
            copied[0] = 0
            added[name] = name + SUFFIX
            graph.initializer.append(numpy_helper.from_array(copied, added[name]))
        node.input[1] = added[name]
    for value in graph.output:  # declared shapes would hold the old 1
        if value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    return out


def confirmed_batched(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto | None:
    """``proto`` itself when it has no fixed batch of 1; else :func:`batched` of it when, on the first two samples
    of ``feeds``, the rewritten graph gives each sample's outputs as the original gives them one at a time;
    else None."""
    if not fixed_batch_one(proto):
        return proto
    count = len(next(iter(feeds.values())))
    if count < 2:
        return None
    rewritten = batched(proto)
    try:
        together = Runner(rewritten).run({k: v[:2] for k, v in feeds.items()})
        original = Runner(proto)
        alone = [original.run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(2)]
    except (ModelRunError, UnsupportedModelError):  # a rewrite onnxruntime refuses is not confirmed
        return None
    for index, got in enumerate(together):
        parts = [np.asarray(a[index]) for a in alone]
        axis = _stacking_axis(parts[0].shape, np.shape(got))
        if axis is None:
            return None
        want = np.concatenate(parts, axis=axis)
        if want.dtype.kind == "f":
            scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-6)
            if float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0)) > TOLERANCE * scale:
                return None
        elif not np.array_equal(got, want):
            return None
    return rewritten


def _stacking_axis(alone: tuple[int, ...], together: tuple[int, ...]) -> int | None:
    """The axis where one sample's output has 1 and two samples' output has 2, all others equal; else None."""
    if len(alone) != len(together):
        return None
    differing = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    if len(differing) != 1 or alone[differing[0]] != 1 or together[differing[0]] != 2:
        return None
    return differing[0]
