"""Runtime audit: the graph onnxruntime actually runs for a model, and what of its int8 survives.

A QDQ model is only fast where onnxruntime fuses it (DESIGN.md, "int8 on onnxruntime"). The audit builds the
session the benchmark builds (:func:`onnxopt.bench.session.benchmark_options`: every graph optimization, the
run's provider and threads), has onnxruntime save its optimized graph, reads it back and reports:

* ``kernels``: how many of each kernel run (``op_type``, prefixed by its domain outside ``ai.onnx``);
* ``quantized``: for each quantized node of the written model (a node reading a DequantizeLinear output), the
  kernel that runs it: ``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ... (int8 compute),
  ``MaxPool on int8`` (data movement on the int8 tensor), ``float: DequantizeLinear -> op -> QuantizeLinear``,
  or ``removed by onnxruntime`` (a Relu absorbed into the quantizer's clamp);
* ``left``: every QuantizeLinear, DequantizeLinear, Transpose and NCHWc Reorder kernel running on its own, with
  the rule that kept it (:func:`_reason_q`, :func:`_reason_dq`, :func:`_reason_layout`). A DequantizeLinear of
  a constant feeding a float op is not folded by onnxruntime: it runs at every inference (``weight``).

Matching the written model's nodes to onnxruntime's: the QDQ selector actions keep the target node's name
(``conv1`` -> QLinearConv ``conv1``); the NHWC layout transform replaces nodes under generated names
``<name>_token_<n>``; unique-DQ duplication appends ``/duplicated``. A node is matched by its name with those
suffixes removed (and an op type the kernel can implement), else by the tensors it writes (its own outputs,
or those of the QuantizeLinear after it), else by those it reads, looking through the Transposes the layout
transform inserted. Output tensor names are not kept by the layout transform, so names come first.

No timing: the same model, provider and onnxruntime version give the same report.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxopt.bench.providers import resolve, session_providers
from onnxopt.bench.run import BenchConfig
from onnxopt.bench.session import benchmark_options
from onnxopt.errors import UnsupportedModelError, one_line
from onnxopt.runtime import session_with_empty_dims_open

#: Ops onnxruntime's CPU QDQ selectors turn into an int8 kernel (QLinear*, QGemm) or run on int8 directly
#: (``qdq_selector_action_transformer.cc``: drop, dropDQ, 1DQ, 2DQ, *DQ, Conv, MatMul, Gemm, Where rules).
INT8_CAPABLE = frozenset(
    {
        "Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "LeakyRelu",
        "Sigmoid", "Softmax", "Where", "ArgMax", "Split",
        *("MaxPool", "ReduceMax", "ReduceMin", "Resize"),  # drop Q/DQ: 8-bit, MaxPool with a positive scale
        *("Expand", "Flatten", "Gather", "GatherElements", "Reshape", "Slice", "Squeeze", "Tile", "Transpose"),
        "Unsqueeze",
    }
)  # fmt: skip
#: Ops whose DequantizeLinear -> op -> QuantizeLinear group is dropped only when both sides share scale and zero
#: point (the value is only moved).
DATA_MOVEMENT = frozenset(
    {"MaxPool", "ReduceMax", "ReduceMin", "Resize", "Expand", "Flatten", "Gather", "GatherElements", "Reshape",
     "Slice", "Squeeze", "Tile", "Transpose", "Unsqueeze", "Split"}
)  # fmt: skip
#: Ops whose int8 form onnxruntime's x86 CPU selectors accept only with uint8 activations.
UINT8_ACTIVATIONS = frozenset({"Conv", "MatMul"})
LAYOUT = ("Transpose", "ReorderInput", "ReorderOutput")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SUFFIX = re.compile(r"(_token_\d+|/duplicated)+$")
_EIGHT_BIT = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)


@dataclasses.dataclass(frozen=True)
class QuantizedNode:
    """One quantized node of the written model and the kernel onnxruntime runs it with."""

    node: str  # its name in the written model (its first output when it has no name)
    op_type: str
    kernel: str  # QLinearConv, "MaxPool on int8", "float: DequantizeLinear -> op -> QuantizeLinear", ...
    int8: bool  # computes (or moves the value) in int8
    runtime_node: str | None  # the node of onnxruntime's graph that runs it (None: removed)
    matched_by: str  # "name", "tensors" or "none"
    reason: str = ""  # why it runs float (empty when it does not)


@dataclasses.dataclass(frozen=True)
class LeftKernel:
    """A QuantizeLinear, DequantizeLinear, Transpose or Reorder kernel running on its own, and why."""

    op_type: str
    node: str  # its name in onnxruntime's graph
    tensor: str  # the tensor it reads
    reason: str
    weight: bool = False  # a DequantizeLinear of a constant, run at every inference


@dataclasses.dataclass(frozen=True)
class RuntimeAudit:
    """What onnxruntime runs for one model (see the module docstring); :meth:`to_dict` is the report's
    ``runtime`` object."""

    provider: str
    threads: int
    onnxruntime: str
    kernels: dict[str, int]
    quantized: list[QuantizedNode]
    left: list[LeftKernel]

    def count(self, op_type: str) -> int:
        """How many kernels of ``op_type`` run, whatever their domain."""
        return sum(n for key, n in self.kernels.items() if key.rsplit(".", 1)[-1] == op_type)

    @property
    def weight_dequantize(self) -> int:
        """DequantizeLinear kernels of constants (weights of float ops) running at every inference."""
        return sum(k.weight for k in self.left)

    @property
    def float_nodes(self) -> list[QuantizedNode]:
        """The quantized nodes of the written model that onnxruntime runs in float."""
        return [q for q in self.quantized if not q.int8 and q.runtime_node is not None]

    def summary(self) -> str:
        """One line: the int8 convolutions and the Q/DQ kernels left."""
        weights = f" ({self.weight_dequantize} of weights)" if self.weight_dequantize else ""
        return (
            f"{self.count('QLinearConv')} QLinearConv, {self.count('QuantizeLinear')} QuantizeLinear + "
            f"{self.count('DequantizeLinear')} DequantizeLinear kernels left{weights}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "threads": self.threads,
            "onnxruntime": self.onnxruntime,
            "kernels": dict(self.kernels),
            "quantize_linear": self.count("QuantizeLinear"),
            "dequantize_linear": self.count("DequantizeLinear"),
            "weight_dequantize_linear": self.weight_dequantize,
            "quantized": [dataclasses.asdict(q) for q in self.quantized],
            "left": [dataclasses.asdict(k) for k in self.left],
        }


def audit_runtime(
    model: str | os.PathLike[str] | onnx.ModelProto, *, provider: str = "cpu", threads: int = 0
) -> RuntimeAudit:
    """The runtime audit of ``model`` (a path or a ModelProto) on ``provider`` with ``threads`` intra-op threads,
    in the session the benchmark builds. Raises :class:`UnsupportedModelError` when onnxruntime cannot load it."""
    full = resolve([provider])[0]
    written = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    with tempfile.TemporaryDirectory(prefix="onnxopt-audit-") as folder:
        saved = Path(folder) / "optimized.onnx"
        options = benchmark_options(threads=threads)
        options.optimized_model_filepath = str(saved)
        source: bytes | str = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        try:
            session = ort.InferenceSession(source, options, providers=session_providers(full))
            session_with_empty_dims_open(session, source, options, session_providers(full))
            runtime = onnx.load(str(saved), load_external_data=False)
        except Exception as e:  # onnxruntime raises its own exception types
            raise UnsupportedModelError(f"onnxruntime cannot optimize the model on {full}: {one_line(e, 200)}") from e
    return _audit(written, runtime, full, threads)


def _audit(written: onnx.ModelProto, runtime: onnx.ModelProto, provider: str, threads: int) -> RuntimeAudit:
    graph = _Graph(runtime.graph)
    model = _Graph(written.graph)
    kernels = Counter(_kernel_key(n) for n in runtime.graph.node)
    ran_as: dict[int, str] = {}  # id of a runtime node -> why the written node it runs is float
    quantized = [_quantized_node(n, model, graph, ran_as) for n in _quantized_nodes(model)]
    left = [_left_kernel(n, graph, model, ran_as) for n in runtime.graph.node if n.op_type in (*_QDQ, *LAYOUT)]
    return RuntimeAudit(
        provider=provider,
        threads=threads,
        onnxruntime=ort.__version__,
        kernels=dict(sorted(kernels.items(), key=lambda kv: (-kv[1], kv[0]))),
        quantized=quantized,
        left=left,
    )


class _Graph:
    """One graph's use-def index: producers, consumers, constants, 8-bit tensors, base names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(x for x in n.input if x):
                self.consumers.setdefault(i, []).append(n)
        self.constants = {t.name: t for t in graph.initializer}
        self.constants.update(
            {n.output[0]: n.attribute[0].t for n in self.nodes if n.op_type == "Constant" and n.attribute[0].t.name}
        )
        self.inputs = {v.name for v in graph.input if v.name not in self.constants}
        self.outputs = {v.name for v in graph.output}
        self.names = {n.name for n in self.nodes}
        self.by_base: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            self.by_base.setdefault(_SUFFIX.sub("", n.name), []).append(n)
        self.eight_bit = _eight_bit_tensors(graph, self)

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def dtype(self, name: str) -> int | None:
        tensor = self.constants.get(name)
        return None if tensor is None else tensor.data_type


def _eight_bit_tensors(graph: onnx.GraphProto, g: _Graph) -> set[str]:
    """Tensors holding 8-bit integers, propagated in graph order (onnxruntime writes its graph sorted)."""
    out = {v.name for v in graph.input if v.type.tensor_type.elem_type in _EIGHT_BIT}
    out |= {name for name, t in g.constants.items() if t.data_type in _EIGHT_BIT}
    for n in g.nodes:
        if n.op_type == "QuantizeLinear" or (_is_int8_kernel(n.op_type) and n.op_type != "MatMulIntegerToFloat"):
            eight = n.op_type != "QGemm" or (len(n.input) > 8 and bool(n.input[8]))
        elif n.op_type in ("DequantizeLinear", "Shape", "Size", "Cast", "NonZero"):
            eight = n.op_type == "Cast" and any(a.name == "to" and a.i in _EIGHT_BIT for a in n.attribute)
        else:
            eight = bool(n.input) and n.input[0] in out
        if eight:
            out.update(o for o in n.output if o)
    return out


def _kernel_key(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _is_int8_kernel(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in ("QGemm", "MatMulIntegerToFloat", "QAttention")


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _quantized_nodes(model: _Graph) -> list[onnx.NodeProto]:
    """Nodes of the written model reading a DequantizeLinear output (Q/DQ themselves excluded)."""

    def from_dq(name: str) -> bool:
        producer = model.producer.get(name)
        return producer is not None and producer.op_type == "DequantizeLinear"

    return [n for n in model.nodes if n.op_type not in _QDQ and any(from_dq(i) for i in n.input if i)]


def _implements(op_type: str, kernel: str) -> bool:
    """Whether a runtime kernel ``kernel`` can be what onnxruntime made of an ``op_type`` node."""
    return (
        op_type in kernel
        or (op_type == "Gemm" and kernel == "QGemm")
        or (op_type == "MatMul" and kernel in ("MatMulIntegerToFloat", "Gemm", "FusedMatMul"))
        or (op_type in ("Conv", "Add") and kernel in ("FusedConv", "NhwcFusedConv"))
    )


def _match(node: onnx.NodeProto, model: _Graph, graph: _Graph) -> tuple[onnx.NodeProto | None, str]:
    """The runtime node that runs ``node`` and how it was found (see the module docstring)."""
    fits = [r for r in graph.by_base.get(node.name, []) if node.name and _implements(node.op_type, r.op_type)]
    if fits:
        return fits[0], "name"
    written = [o for o in node.output if o]
    written += [q.output[0] for o in written for q in model.consumers.get(o, []) if q.op_type == "QuantizeLinear"]
    for tensor in written:
        found = _through_layout(graph, model, graph.producer.get(tensor), upstream=True)
        if found is not None and _implements(node.op_type, found.op_type):
            return found, "tensors"
    read = []
    for i in (x for x in node.input if x):
        producer = model.producer.get(i)
        read.append(producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else i)
    for tensor in read:
        for consumer in graph.consumers.get(tensor, []):
            found = _through_layout(graph, model, consumer, upstream=False)
            if found is not None and _implements(node.op_type, found.op_type):
                return found, "tensors"
    return None, "none"


def _through_layout(
    graph: _Graph, model: _Graph, node: onnx.NodeProto | None, *, upstream: bool
) -> onnx.NodeProto | None:
    """``node``, or past the Transposes onnxruntime's layout transform inserted next to it (a Transpose of the
    runtime graph that the written model does not name)."""
    for _ in range(4):
        if node is None or node.op_type != "Transpose" or node.name in model.names:
            return node
        node = graph.producer.get(node.input[0]) if upstream else graph.consumers.get(node.output[0], [None])[0]
    return node


def _quantized_node(node: onnx.NodeProto, model: _Graph, graph: _Graph, ran_as: dict[int, str]) -> QuantizedNode:
    """The kernel that runs ``node``; records in ``ran_as`` why the runtime nodes running it are float."""
    found, how = _match(node, model, graph)
    name = _label(node)
    if found is None:
        pieces = _between(node, model, graph)
        if pieces:  # onnxruntime rewrote it into other float ops (HardSwish -> HardSigmoid, Mul)
            ops = ", ".join(p.op_type for p in pieces)
            why = _no_kernel(node.op_type) if node.op_type not in INT8_CAPABLE else _why_float(pieces[0], graph)
            why += f"; onnxruntime runs it as {ops}"
            ran_as.update((id(p), why) for p in pieces)
            kernel = f"float: DequantizeLinear -> {ops} -> QuantizeLinear"
            return QuantizedNode(name, node.op_type, kernel, False, _label(pieces[0]), "neighbours", why)
        clamp = node.op_type in ("Relu", "Clip")
        kernel = "removed: the QuantizeLinear's clamp is the activation" if clamp else "removed by onnxruntime"
        return QuantizedNode(name, node.op_type, kernel, True, None, how)
    if _is_int8_kernel(found.op_type):
        return QuantizedNode(name, node.op_type, found.op_type, True, found.name, how)
    if found.input and found.input[0] in graph.eight_bit:
        return QuantizedNode(name, node.op_type, f"{found.op_type} on int8", True, found.name, how)
    if found.op_type in ("Shape", "Size"):
        return QuantizedNode(name, node.op_type, f"{found.op_type} of a float tensor", False, found.name, how,
                             _why_float(found, graph))  # fmt: skip
    before = "DequantizeLinear -> " if _dq_inputs(found, graph) else ""
    after = " -> QuantizeLinear" if _q_consumers(found, graph) else ""
    kernel = f"float: {before}{found.op_type}{after}"
    ran_as[id(found)] = _why_float(found, graph)
    return QuantizedNode(name, node.op_type, kernel, False, found.name, how, ran_as[id(found)])


def _between(node: onnx.NodeProto, model: _Graph, graph: _Graph) -> list[onnx.NodeProto]:
    """The runtime nodes between the DequantizeLinear nodes that feed ``node`` and the QuantizeLinear nodes
    after it, found by those Q/DQ nodes' names (onnxruntime keeps them), in graph order."""
    dqs = {p.name for i in node.input if (p := model.producer.get(i)) is not None and p.op_type == "DequantizeLinear"}
    qs = {c.name for o in node.output for c in model.consumers.get(o, []) if c.op_type == "QuantizeLinear"}
    frontier = [r.output[0] for r in graph.nodes if r.op_type == "DequantizeLinear" and _SUFFIX.sub("", r.name) in dqs]
    seen: dict[int, onnx.NodeProto] = {}
    reaches_q = False
    while frontier and len(seen) < 8:
        for consumer in graph.consumers.get(frontier.pop(), []):
            if consumer.op_type in _QDQ:
                reaches_q |= consumer.name in qs
            elif id(consumer) not in seen:
                seen[id(consumer)] = consumer
                frontier.extend(o for o in consumer.output if o)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(seen.values(), key=lambda n: order[id(n)]) if reaches_q else []


def _dq_inputs(node: onnx.NodeProto, graph: _Graph) -> list[onnx.NodeProto]:
    found = (graph.producer.get(i) for i in node.input if i)
    return [p for p in found if p is not None and p.op_type == "DequantizeLinear"]


def _q_consumers(node: onnx.NodeProto, graph: _Graph) -> list[onnx.NodeProto]:
    return [c for o in node.output for c in graph.consumers.get(o, []) if c.op_type == "QuantizeLinear"]


def _why_float(node: onnx.NodeProto, graph: _Graph) -> str:
    """Why onnxruntime runs ``node`` (fed by DequantizeLinear) in float: no int8 kernel, or the first of its
    selector's rules the group misses."""
    op = node.op_type
    if op in ("Shape", "Size"):
        return (
            f"{op} ({_names([node])}) reads the dequantized tensor: reading the quantized one instead would "
            "leave no DequantizeLinear to run"
        )
    if op not in INT8_CAPABLE:
        return _no_kernel(op)
    dqs, qs = _dq_inputs(node, graph), _q_consumers(node, graph)
    missing = [i for i in node.input if i and not _from_dq(i, graph)]
    if missing:
        return f"{op}: input '{missing[0]}' does not come from a DequantizeLinear (the selector needs every input)"
    if any(o in graph.outputs for o in node.output):
        return f"{op}: its output is a graph output, not quantized"
    readers = [c for o in node.output for c in graph.consumers.get(o, []) if c.op_type != "QuantizeLinear"]
    if readers:
        return f"{op}: its output is read by float consumers too ({', '.join(sorted({c.op_type for c in readers}))})"
    if not qs:
        return f"{op}: no QuantizeLinear after it"
    types_in = {graph.dtype(d.input[2]) if len(d.input) > 2 else onnx.TensorProto.UINT8 for d in dqs[:1]}
    type_out = graph.dtype(qs[0].input[2]) if len(qs[0].input) > 2 else onnx.TensorProto.UINT8
    if op in UINT8_ACTIVATIONS and onnx.TensorProto.INT8 in types_in:
        return f"{op}: int8 (signed) activations; onnxruntime's x86 CPU selectors fuse {op} with uint8 activations"
    if type_out not in types_in:
        return f"{op}: input and output quantized to different types"
    if op in DATA_MOVEMENT and _different_params(dqs[0], qs[0], graph):
        return f"{op}: moves the value but its input and output have different scales or zero points"
    return f"{op}: onnxruntime's selector declined the group"


def _no_kernel(op: str) -> str:
    if op in ("Relu", "Clip"):
        return (
            f"{op} has no int8 kernel; onnxruntime removes it only where the QuantizeLinear after it clamps the "
            "same range (zero point at the type's minimum)"
        )
    return f"{op} has no int8 kernel (DequantizeLinear -> {op} -> QuantizeLinear)"


def _from_dq(tensor: str, graph: _Graph) -> bool:
    producer = graph.producer.get(tensor)
    return producer is not None and producer.op_type == "DequantizeLinear"


def _different_params(dq: onnx.NodeProto, q: onnx.NodeProto, graph: _Graph) -> str:
    """'' when ``dq`` and ``q`` share scale and zero point; else what differs."""
    pairs = (("scales", 1), ("zero points", 2), ("types", 2))
    for what, slot in pairs:
        a = dq.input[slot] if len(dq.input) > slot else ""
        b = q.input[slot] if len(q.input) > slot else ""
        if what == "types":
            if graph.dtype(a) != graph.dtype(b):
                return "types"
            continue
        x, y = graph.array(a), graph.array(b)
        if a != b and (x is None or y is None or x.shape != y.shape or not np.array_equal(x, y)):
            return what
    return ""


def _names(nodes: Iterable[onnx.NodeProto | None]) -> str:
    return ", ".join(sorted({_SUFFIX.sub("", _label(n)) for n in nodes if n is not None})) or "-"


def _left_kernel(node: onnx.NodeProto, graph: _Graph, model: _Graph, ran_as: dict[int, str]) -> LeftKernel:
    tensor = node.input[0] if node.input else ""
    if node.op_type == "DequantizeLinear":
        weight = tensor in graph.constants
        return LeftKernel(node.op_type, node.name, tensor, _reason_dq(node, graph, ran_as), weight)
    if node.op_type == "QuantizeLinear":
        return LeftKernel(node.op_type, node.name, tensor, _reason_q(node, graph, ran_as))
    return LeftKernel(node.op_type, node.name, tensor, _reason_layout(node, graph, model))


def _requantization(dq: onnx.NodeProto, q: onnx.NodeProto, graph: _Graph) -> str:
    differs = _different_params(dq, q, graph) or "equal parameters"
    producer = graph.producer.get(dq.input[0])
    consumers = graph.consumers.get(q.output[0], [])
    return (
        f"requantization: DequantizeLinear -> QuantizeLinear with different {differs} between "
        f"{_names([producer]) if producer is not None else 'graph input'} and {_names(consumers)}"
    ).replace("different equal parameters", "equal parameters")


def _reason_dq(node: onnx.NodeProto, graph: _Graph, ran_as: dict[int, str]) -> str:
    """Why a DequantizeLinear still runs, by the first rule that holds."""
    readers = graph.consumers.get(node.output[0], [])
    if node.input[0] in graph.constants:
        return f"weight of a float op: {_names(readers)} ({', '.join(sorted({r.op_type for r in readers}))})"
    if node.output[0] in graph.outputs:
        return "graph output"
    if readers and all(r.op_type == "QuantizeLinear" for r in readers):
        return _requantization(node, readers[0], graph)
    floats = [r for r in readers if r.op_type != "QuantizeLinear"]
    if not floats:
        return "no consumer"
    first = floats[0]
    if any(o in graph.outputs for o in first.output) and not _q_consumers(first, graph):
        return f"graph output: {first.op_type} ({_names([first])}) computes a float output"
    return ran_as.get(id(first)) or _why_float(first, graph)


def _reason_q(node: onnx.NodeProto, graph: _Graph, ran_as: dict[int, str]) -> str:
    """Why a QuantizeLinear still runs, by the first rule that holds."""
    tensor = node.input[0]
    if tensor in graph.inputs:
        return "graph input"
    producer = graph.producer.get(tensor)
    if producer is None:
        return "quantizes a constant"
    if producer.op_type == "DequantizeLinear":
        return _requantization(producer, node, graph)
    others = [c for c in graph.consumers.get(tensor, []) if c.op_type != "QuantizeLinear"]
    if others or tensor in graph.outputs:
        floats = _names(others) if others else "the graph output"
        return f"the producer's output is read by both int8 and float consumers ({_names([producer])}: {floats})"
    if id(producer) in ran_as:
        return ran_as[id(producer)]
    if _dq_inputs(producer, graph):
        return _why_float(producer, graph)
    return f"{producer.op_type} ({_names([producer])}) runs float on float inputs: the int8 region starts here"


def _reason_layout(node: onnx.NodeProto, graph: _Graph, model: _Graph) -> str:
    producer = graph.producer.get(node.input[0]) if node.input else None
    consumers = graph.consumers.get(node.output[0], []) if node.output else []
    where = f"between {_names([producer]) if producer is not None else 'graph input'} and {_names(consumers)}"
    if node.op_type != "Transpose":
        return f"NCHWc layout: {node.op_type} for the blocked-layout float kernels, {where}"
    if node.name in model.names:
        eight = "on int8" if node.input[0] in graph.eight_bit else "in float"
        return f"the model's own Transpose, run {eight}"
    return f"NHWC layout: inserted by onnxruntime's layout transform {where}"


def audit_if_quantized(written: Path | None, records: Iterable[Any], bench: BenchConfig | None) -> RuntimeAudit | None:
    """The audit of an optimize run's written model when its ``quantize`` pass applied (``records``: the run's
    pass records, read by ``name`` and ``status``), on the run's first benchmark provider and thread count
    (``bench``; None: the CPU, onnxruntime's default threads); None otherwise, or when onnxruntime cannot load
    the model (the run's own checks say why)."""
    if written is None or not any(r.name == "quantize" and str(r.status) == "applied" for r in records):
        return None
    bench = bench or BenchConfig()
    try:
        return audit_runtime(written, provider=bench.providers[0], threads=bench.threads)
    except UnsupportedModelError:
        return None
