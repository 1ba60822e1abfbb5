"""Structural problems of a model that onnx's checker reports poorly, each named in one sentence.

The checker says "Nodes in a graph must be topologically sorted" both for a
node reading a tensor that nothing produces and for a cycle; and it accepts
ops from domains nobody can run, tensors holding more or fewer bytes (or
values) than their dims say, and a Conv whose ``kernel_shape`` disagrees with
its weight (onnxruntime loads that one too, and fails only when it runs).
:func:`structural_problem` tells these apart (main graph and every subgraph,
with names from outer scopes visible inside). Everything here is linear in
the size of the graph.
"""

from __future__ import annotations

import collections
import math

import onnx
from onnx import TensorProto, helper

#: Operator domains onnx or onnxruntime define.
KNOWN_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.experimental",
        "com.ms.internal.nhwc",
        "org.pytorch.aten",
    }
)

#: Bits per element of the packed sub-byte types (raw_data and int32_data hold them packed).
_PACKED_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (
        ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6),
    )
    if hasattr(TensorProto, name)
}  # fmt: skip
#: Convolutions whose ``kernel_shape`` must equal their weight's spatial dims: op type -> the weight's input index.
_KERNEL_WEIGHT = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}


def structural_problem(model: onnx.ModelProto) -> str | None:
    """The first structural problem of ``model`` as a sentence, or None."""
    if not model.graph.output:  # the checker accepts it; onnxruntime can then run nothing
        return "the graph has no outputs"
    local = {f.domain for f in model.functions}
    return _graph_problem(model.graph, set(), KNOWN_DOMAINS | local)


def _graph_problem(graph: onnx.GraphProto, outer: set[str], domains: frozenset[str]) -> str | None:
    defined = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    produced = {o for node in graph.node for o in node.output if o}
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for tensor in graph.initializer:
        problem = tensor_problem(tensor)
        if problem:
            return f"initializer '{tensor.name}' {problem}"
    visible: set[str] | None = None  # what a subgraph sees: made once, for the first subgraph
    for node in graph.node:
        what = f"node '{node.name}' ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"
        if node.domain not in domains:
            return f"{what} is from domain '{node.domain}', which neither onnx nor onnxruntime defines"
        for name in node.input:
            if name and name not in defined and name not in produced:
                return f"{what} reads '{name}', which no node, initializer or graph input provides"
        problem = _kernel_problem(node, shapes)
        if problem:
            return f"{what} {problem}"
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                problem = tensor_problem(attr.t)
                if problem:
                    return f"{what}: attribute '{attr.name}' {problem}"
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                visible = defined | produced if visible is None else visible
                problem = _graph_problem(sub, visible, domains)
                if problem:
                    return f"in a subgraph of {what}: {problem}"
    cycle = _cycle(graph, defined)
    return f"the graph has a cycle through '{cycle}'" if cycle else None


def tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """What is wrong with ``tensor``'s data as a phrase ("has 80 bytes of raw_data, but ..."), or None.

    The data must be exactly what the dims and type say: raw_data ``ceil(elements * bits / 8)`` bytes, or
    that many values in the typed field (complex numbers two values each; 4- and 2-bit types a packed byte
    each). External
    data not loaded and segments are not judged here."""
    if tensor.data_location == TensorProto.EXTERNAL or tensor.HasField("segment"):
        return None
    elements = math.prod(tensor.dims)
    shape = "x".join(map(str, tensor.dims)) or "scalar"
    try:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        bits = _PACKED_BITS.get(tensor.data_type) or 8 * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None  # an undefined or unknown type: the checker's to name
    if tensor.HasField("raw_data") and tensor.data_type != TensorProto.STRING:
        size, expected = len(tensor.raw_data), math.ceil(elements * bits / 8)
        if size != expected:
            return f"has {size} bytes of raw_data, but its dims ({shape}) and type say {expected}"
        return None
    count = len(getattr(tensor, field))
    if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        expected = 2 * elements
    elif bits in (2, 4):  # one byte of packed elements per int32_data value (6-bit: one element each)
        expected = math.ceil(elements * bits / 8)
    else:
        expected = elements
    if count != expected:
        return f"has {count} values in {field}, but its dims ({shape}) say {expected}"
    return None


def _kernel_problem(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> str | None:
    """A convolution's ``kernel_shape`` that disagrees with its initializer weight's spatial dims, as a phrase."""
    index = _KERNEL_WEIGHT.get(node.op_type)
    if index is None or node.domain not in ("", "ai.onnx") or len(node.input) <= index:
        return None
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    weight = shapes.get(node.input[index])
    if kernel is None or weight is None or weight[2:] == kernel:
        return None
    dims = "x".join(map(str, weight))
    return f"has kernel_shape {'x'.join(map(str, kernel))}, but its weight '{node.input[index]}' is {dims}"


def _cycle(graph: onnx.GraphProto, defined: set[str]) -> str | None:
    """A tensor on a cycle, if the nodes cannot be ordered at all; None when they can.

    Kahn's algorithm, linear in nodes + edges: a node waits for each input not ``defined`` (one count per
    occurrence); a tensor's first producer to run makes it ready and releases its consumers. Nodes still
    waiting at the end are on a cycle or downstream of one: from the first of them (in graph order) the
    walk goes back through producers that never ran until a tensor repeats -- that tensor is on the cycle.
    """
    nodes = list(graph.node)
    waiting = [0] * len(nodes)
    consumers: dict[str, list[int]] = {}
    producers: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name and name not in defined:
                waiting[index] += 1
                consumers.setdefault(name, []).append(index)
        for name in node.output:
            if name:
                producers.setdefault(name, index)
    ready = set(defined)
    queue = collections.deque(i for i, count in enumerate(waiting) if count == 0)
    done = 0
    while queue:
        index = queue.popleft()
        done += 1
        for name in nodes[index].output:
            if not name or name in ready:
                continue
            ready.add(name)
            for consumer in consumers.get(name, ()):
                waiting[consumer] -= 1
                if waiting[consumer] == 0:
                    queue.append(consumer)
    if done == len(nodes):
        return None
    index = next(i for i, count in enumerate(waiting) if count)
    seen: set[str] = set()
    while True:
        name = next(i for i in nodes[index].input if i and i not in ready)
        if name in seen:
            return name
        seen.add(name)
        index = producers[name]
