"""Which intermediate tensors a student can be taught directly: the ones that kept their width.

Distilling only the outputs of a pruned detector teaches its many layers through one signal far downstream.
Where pruning had to keep a tensor's width -- a residual stream whose channels every block adds into, the
feature maps the heads read -- the student's tensor means what the teacher's means, channel for channel, and
can be matched to it (FitNets, Romero et al. 2015, without the adapter a width change would need).

:func:`kept_width_features` finds them by comparing the two graphs: a tensor both compute, under the same name,
with the same shape per sample, downstream of something the student changed (a weight that differs, or an
input that changed shape), and not a graph output (the output losses have those). At most ``limit`` are
returned, spread evenly along the graph's order and always including the last (nearest the heads).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.distill.batch_memory import per_sample_float_shapes

#: Intermediate tensors matched at most: each costs the teacher an extra output and the twin a kept tensor.
FEATURE_LIMIT = 8


def _changed_tensors(student: onnx.ModelProto, teacher: onnx.ModelProto) -> set[str]:
    """Tensors of ``student`` whose values may differ from ``teacher``'s: outputs of nodes that read a weight the
    teacher lacks or holds differently, a tensor the teacher does not compute, or a changed tensor."""
    theirs = {t.name: t for t in teacher.graph.initializer}
    known = {i.name for i in teacher.graph.input} | {o for n in teacher.graph.node for o in n.output}
    mine = {t.name: t for t in student.graph.initializer}
    changed: set[str] = set()
    for node in student.graph.node:
        hit = False
        for name in node.input:
            if not name:
                continue
            if name in mine:
                other = theirs.get(name)
                if other is None or not np.array_equal(numpy_helper.to_array(mine[name]), numpy_helper.to_array(other)):
                    hit = True
            elif name in changed or name not in known:
                hit = True
        if hit:
            changed.update(o for o in node.output if o)
    return changed


def kept_width_features(student: onnx.ModelProto, teacher: onnx.ModelProto, limit: int = FEATURE_LIMIT) -> list[str]:
    """Up to ``limit`` intermediate tensors to match between ``student`` and ``teacher`` (the module docstring),
    in the student's node order; empty when the student changed nothing of the teacher's tensors."""
    # feature maps and sequences (rank 3 or more with the batch), not vectors
    mine = {k: v for k, v in per_sample_float_shapes(student).items() if len(v) >= 2}
    theirs = per_sample_float_shapes(teacher)
    changed = _changed_tensors(student, teacher)
    outputs = {o.name for o in student.graph.output} | {o.name for o in teacher.graph.output}
    ordered = [o for node in student.graph.node for o in node.output if o]
    candidates = [
        name for name in ordered
        if name in changed and name not in outputs and name in mine and mine[name] == theirs.get(name)
    ]  # fmt: skip
    if len(candidates) <= limit:
        return candidates
    picks = np.linspace(len(candidates) - 1, 0, limit).round().astype(int)  # the last one always
    return [candidates[i] for i in sorted(set(picks.tolist()))]


def with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs the intermediate tensors ``names`` (after its own outputs);
    ``proto`` itself when there are none."""
    if not names:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for name in names:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy
