"""Channel dependency analysis for structured pruning: which output channels can be removed together.

A *source* is a Conv (any group), ConvTranspose (group 1), Gemm, or MatMul
with a constant weight: its output channels can be removed by deleting weight
rows. From each source the channels are followed forward. Every tensor they
reach gets a *layout*: its channel axis and a list of segments, each
``[group, size]`` (a prunable group's channels) or ``[None, size]`` (fixed
channels). Along the way the analysis records the *edits* that removing
channels will need, and which groups must not be pruned at all (*frozen*).

How each consumer of a channel tensor is handled:

* per-channel ops pass the layout through: BatchNormalization (its four
  parameters sliced), Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish,
  Tanh, Elu, Selu, Softplus, Identity, Dropout, Max/Average/LpPool,
  GlobalAverage/GlobalMaxPool, Resize/Upsample (sizes or scales leave the
  channel axis alone), PRelu (slope sliced), and Mul/Add/Sub/Div by a
  constant (sliced when it varies per channel);
* a depthwise Conv (group = channels, one filter each) passes it through too:
  its filters and bias are sliced and ``group`` shrinks with them;
* Add/Sub/Mul/Div/Max/Min/Sum/Mean of two channel tensors *couple* them: their
  groups merge and prune the same channels (residual connections);
* Concat on the channel axis concatenates the layouts (offsets follow);
* Transpose moves the channel axis; Flatten, or a Reshape to two dimensions,
  spreads each channel over ``H*W`` features (the mapping is computed from the
  static shape, so NCHW and NHWC flattening both work) and the Reshape target
  becomes ``[0, -1]``;
* Conv/ConvTranspose (group 1), Gemm and MatMul reading the channels on their
  input axis *absorb* them: their weight loses the matching input slices;
* a grouped Conv (``group`` G, not depthwise) reading one group's channels
  absorbs them too, each of its G row blocks keeping its own input columns --
  which needs the same number of channels removed from each of the G blocks;
  a grouped Conv source needs the same of its output channels. Such groups
  carry a *block* count (``blocks``) that the pruning decision honours;
* Shape is harmless (a runtime shape follows the pruned tensor);
* anything else -- a graph output, Split/Slice/Gather, a grouped Conv reading
  concatenated channels, coupled groups whose block counts disagree, an op
  this list does not know, a shape that is not static where one is
  needed -- freezes every group in the tensor's layout, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.passes._graph_edit import attribute, constant_array, subgraph_reads

PASS_THROUGH = frozenset(
    {
        "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
        "Identity", "Dropout", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
        "Resize", "Upsample",
    }
)  # fmt: skip
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"})


@dataclasses.dataclass
class Layout:
    """Where a tensor's channels are (``axis``, negative from the end) and which group owns each segment.

    After a flatten, ``spread[c]`` lists the feature indices channel ``c`` became.
    """

    axis: int
    segments: list[list]  # [[group id or None, size], ...]
    spread: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def width(self) -> int:
        """The size of the channel axis itself (channels times the features each became)."""
        return self.channels * (1 if self.spread is None else self.spread.shape[1])


@dataclasses.dataclass
class Edit:
    """A change removing channels will need: ``kind`` is out/param/depthwise/in/grouped_in/reshape."""

    kind: str
    node: ir.Node
    layout: Layout
    index: int = 1  # the node input edited
    axis: int = 0  # the axis of that input's array
    spread: np.ndarray | None = None  # for "in" after a flatten: feature indices of each channel, [C, k]


class ChannelGroups:
    """The analysis of one graph: groups (union-find), their sources, edits and frozen reasons."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.parent: dict[int, int] = {}
        self.sources: dict[int, list[ir.Node]] = {}
        self.channels: dict[int, int] = {}
        self.frozen: dict[int, str] = {}
        self.edits: list[Edit] = []
        self.layouts: dict[int, Layout] = {}  # id(value) -> layout
        self.blocks: dict[int, int] = {}  # group -> equal-count blocks its pruning must respect (grouped convs)
        self._analyze()

    # ---------------------------------------------------------------- union-find

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.sources[ra] += self.sources.pop(rb)
            if rb in self.frozen:
                self.frozen.setdefault(ra, self.frozen.pop(rb))
            if rb in self.blocks:
                self._require_blocks(ra, self.blocks.pop(rb))

    def _require_blocks(self, group: int, blocks: int) -> None:
        """Group ``group`` must lose the same number of channels in each of ``blocks`` equal blocks."""
        root = self.find(group)
        current = self.blocks.get(root, 1)
        if blocks == 1 or current == blocks:
            self.blocks[root] = max(current, blocks)
        elif current == 1:
            self.blocks[root] = blocks
        else:
            self.frozen.setdefault(root, f"grouped convolutions with {current} and {blocks} groups share channels")

    def _freeze(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for g, _ in layout.segments:
            if g is not None:
                self.frozen.setdefault(self.find(g), reason)

    def roots(self) -> list[int]:
        return sorted({self.find(g) for g in self.parent})

    # ---------------------------------------------------------------- analysis

    def _analyze(self) -> None:
        read_inside = subgraph_reads(self.graph)
        for node in self.graph:  # topological order: inputs' layouts are known before their consumers
            self._visit(node)
            for value in node.outputs:
                if id(value) in read_inside:
                    self._freeze(self.layouts.get(id(value)), f"'{value.name}' is read inside a subgraph")
        for value in self.graph.outputs:
            self._freeze(self.layouts.get(id(value)), f"'{value.name}' is a graph output")

    def _visit(self, node: ir.Node) -> None:
        inputs = [self.layouts.get(id(v)) if v is not None else None for v in node.inputs]
        carried = [i for i, lay in enumerate(inputs) if lay is not None]
        where = f"{node.op_type} '{node.name or node.outputs[0].name}'"
        if node.domain not in ("", "ai.onnx"):
            self._freeze_all(inputs, f"{where} is from domain {node.domain}")
            return
        if carried:
            self._consume(node, inputs, carried, where)
        source = self._source(node)
        if source is not None:
            group = len(self.parent)
            self.parent[group] = group
            self.sources[group] = [node]
            self.channels[group] = source[1]
            self.layouts[id(node.outputs[0])] = Layout(source[0], [[group, source[1]]])
            self.edits.append(Edit("out", node, self.layouts[id(node.outputs[0])], 1, source[2]))
            groups = attribute(node, "group", 1) if node.op_type == "Conv" else 1
            if groups > 1:
                self._require_blocks(group, int(groups))

    def _freeze_all(self, inputs: Sequence[Layout | None], reason: str) -> None:
        for layout in inputs:
            self._freeze(layout, reason)

    def _source(self, node: ir.Node) -> tuple[int, int, int] | None:
        """(channel axis of the output, channels, weight's output axis) of a prunable producer."""
        weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.dtype.kind != "f" or not _private(node.inputs[1]):
            return None
        if node.op_type == "Conv" and weight.ndim >= 3 and weight.shape[0] % attribute(node, "group", 1) == 0:
            if _depthwise(node, weight):
                return None  # a depthwise Conv passes its input's channels through (or keeps them)
            return 1, weight.shape[0], 0
        if node.op_type == "ConvTranspose" and attribute(node, "group", 1) == 1 and weight.ndim >= 3:
            return 1, weight.shape[1], 1
        if node.op_type == "Gemm" and weight.ndim == 2:
            trans = attribute(node, "transB", 0)
            return 1, weight.shape[0 if trans else 1], 0 if trans else 1
        if node.op_type == "MatMul" and weight.ndim == 2:
            return -1, weight.shape[1], 1
        return None

    def _consume(self, node: ir.Node, inputs: list[Layout | None], carried: list[int], where: str) -> None:
        op = node.op_type
        layout = inputs[carried[0]]
        assert layout is not None
        out = node.outputs[0] if node.outputs else None
        if op == "Shape":
            return  # a runtime shape follows the pruned tensor by itself; only baked-in constants would not
        if op in PASS_THROUGH and carried == [0]:
            if op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
                self._freeze(layout, f"{where}: its mask output is used")
                return
            self._set(out, layout)
            return
        if op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None:
            self._freeze(layout, f"{where} resizes to explicit sizes (they include the channel count)")
            return
        if op == "BatchNormalization" and carried == [0]:
            if len(node.outputs) > 1 or layout.spread is not None:
                self._freeze(layout, f"{where} is in training mode or follows a flatten")
                return
            for index in range(1, 5):
                self.edits.append(Edit("param", node, layout, index, 0))
            self._set(out, layout)
            return
        if op == "PRelu" and carried == [0]:
            self._param_or_freeze(node, 1, layout, where)
            self._set(out, layout)
            return
        if op in ELEMENTWISE:
            self._elementwise(node, inputs, carried, where)
            return
        if op == "Conv" and carried == [0]:
            self._conv_consumer(node, layout, where)
            return
        if op == "ConvTranspose" and carried == [0] and attribute(node, "group", 1) == 1:
            self._absorb(node, layout, 0, where)
            return
        if op in ("Gemm", "MatMul") and carried == [0]:
            self._matrix_consumer(node, layout, where)
            return
        if op == "Concat" and all(i in carried or _static_channels(v, layout.axis) for i, v in enumerate(node.inputs)):
            self._concat(node, inputs, where)
            return
        if op == "Transpose" and carried == [0]:
            self._transpose(node, layout, where)
            return
        if op in ("Flatten", "Reshape") and carried == [0]:
            self._flatten(node, layout, where)
            return
        self._freeze_all(inputs, f"{where} does not keep channels apart")

    def _set(self, value: ir.Value | None, layout: Layout) -> None:
        if value is not None:
            self.layouts[id(value)] = layout

    def _param_or_freeze(self, node: ir.Node, index: int, layout: Layout, where: str) -> bool:
        array = constant_array(node.inputs[index]) if index < len(node.inputs) else None
        if array is None:
            self._freeze(layout, f"{where}: its operand is not a constant")
            return False
        axis = _operand_axis(array, layout, _rank(node.inputs[0]))
        if axis == "bad":
            self._freeze(layout, f"{where}: its constant does not broadcast per channel")
            return False
        if axis is not None:
            self.edits.append(Edit("param", node, layout, index, axis))
        return True

    def _elementwise(self, node: ir.Node, inputs: list[Layout | None], carried: list[int], where: str) -> None:
        first = inputs[carried[0]]
        assert first is not None
        if len(carried) == 1:
            other = 1 - carried[0] if len(node.inputs) == 2 else None
            if node.op_type not in ("Add", "Sub", "Mul", "Div") or other is None:
                self._freeze(first, f"{where} mixes channels with a non-constant")
                return
            if node.op_type == "Div" and carried[0] == 1:
                self._freeze(first, f"{where} divides by the channels")
                return
            if self._param_or_freeze(node, other, first, where):
                self._set(node.outputs[0], first)
            return
        layouts = [inputs[i] for i in carried]
        if len(carried) != len(node.inputs) or any(
            lay is None
            or len(lay.segments) != 1
            or lay.axis != first.axis
            or lay.channels != first.channels
            or lay.spread is not None
            for lay in layouts
        ):
            self._freeze_all(layouts, f"{where} combines channel tensors of different layouts")
            return
        for lay in layouts[1:]:
            self._union(first.segments[0][0], lay.segments[0][0])  # type: ignore[index]
        self._set(node.outputs[0], first)

    def _conv_consumer(self, node: ir.Node, layout: Layout, where: str) -> None:
        weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        group = attribute(node, "group", 1)
        if weight is None or not _private(node.inputs[1]):
            self._freeze(layout, f"{where}: its weight is not a private constant")
        elif layout.spread is not None:
            self._freeze(layout, f"{where} reads flattened channels")
        elif group == 1:
            self._absorb(node, layout, 1, where)
        elif group == layout.channels and weight.shape[0] == group and weight.shape[1] == 1:
            self.edits.append(Edit("depthwise", node, layout, 1, 0))
            self._set(node.outputs[0], layout)
        elif len(layout.segments) != 1 or layout.segments[0][0] is None or weight.shape[1] * group != layout.width:
            self._freeze(layout, f"{where} is a grouped convolution (group {group}) over mixed channels")
        else:
            self._require_blocks(layout.segments[0][0], int(group))
            self.edits.append(Edit("grouped_in", node, layout, 1, 1))

    def _absorb(self, node: ir.Node, layout: Layout, weight_axis: int, where: str) -> None:
        weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or not _private(node.inputs[1]):
            self._freeze(layout, f"{where}: its weight is not a private initializer")
            return
        if weight.shape[weight_axis] != layout.width:
            self._freeze(layout, f"{where}: its weight has {weight.shape[weight_axis]} inputs, not {layout.width}")
            return
        self.edits.append(Edit("in", node, layout, 1, weight_axis))

    def _matrix_consumer(self, node: ir.Node, layout: Layout, where: str) -> None:
        weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        rank = _rank(node.inputs[0])
        last = layout.axis == -1 or (rank is not None and layout.axis == rank - 1)
        if weight is None or weight.ndim != 2 or not last:
            self._freeze(layout, f"{where} does not read the channels as its input features")
            return
        if node.op_type == "Gemm" and attribute(node, "transA", 0):
            self._freeze(layout, f"{where} has transA=1")
            return
        transposed = node.op_type == "Gemm" and attribute(node, "transB", 0)
        self._absorb(node, layout, 1 if transposed else 0, where)

    def _concat(self, node: ir.Node, inputs: list[Layout | None], where: str) -> None:
        known = next(lay for lay in inputs if lay is not None)
        rank = _rank(node.outputs[0]) or _rank(node.inputs[0])
        axis = attribute(node, "axis", 0)
        if rank is None or _norm(axis, rank) != _norm(known.axis, rank):
            self._freeze_all(inputs, f"{where} concatenates along another axis")
            return
        segments: list[list] = []
        for value, lay in zip(node.inputs, inputs, strict=True):
            segments += lay.segments if lay is not None else [[None, _static_channels(value, known.axis)]]
        self._set(node.outputs[0], Layout(known.axis, segments))

    def _transpose(self, node: ir.Node, layout: Layout, where: str) -> None:
        perm = attribute(node, "perm", None)
        rank = _rank(node.inputs[0])
        if perm is None or rank is None:
            self._freeze(layout, f"{where}: permutation or rank unknown")
            return
        axis = list(perm).index(_norm(layout.axis, rank))
        self._set(node.outputs[0], Layout(axis, layout.segments))

    def _flatten(self, node: ir.Node, layout: Layout, where: str) -> None:
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        if layout.spread is not None:
            self._freeze(layout, f"{where} flattens twice")
            return
        out_rank = _rank(node.outputs[0])
        dims = list(shape)[1:] if shape is not None else []
        if node.op_type == "Flatten" and attribute(node, "axis", 1) != 1:
            self._freeze(layout, f"{where} does not flatten from axis 1")
            return
        if not dims or not all(isinstance(d, int) for d in dims) or _norm(layout.axis, len(dims) + 1) == 0:
            self._freeze(layout, f"{where}: the flattened shape is not static")
            return
        if node.op_type == "Reshape" and not _flattens_batch_first(node, int(np.prod(dims)), out_rank):
            splits = out_rank is not None and out_rank > len(dims) + 1
            what = "splits the channel axis (a channel shuffle regroups channels across groups)" if splits else (
                "is not a flatten to [batch, features]")  # fmt: skip
            self._freeze(layout, f"{where} {what}")
            return
        axis = _norm(layout.axis, len(dims) + 1) - 1
        positions = np.moveaxis(np.arange(int(np.prod(dims))).reshape(dims), axis, 0).reshape(dims[axis], -1)
        if node.op_type == "Reshape":
            self.edits.append(Edit("reshape", node, layout))
        self._set(node.outputs[0], Layout(-1, layout.segments, positions))


def _flattens_batch_first(node: ir.Node, features: int, out_rank: int | None) -> bool:
    """Whether a Reshape is ``[N, d1, ...] -> [N, d1*...]`` (so its target can become ``[0, -1]``)."""
    out = node.outputs[0].shape
    if out is not None and out_rank == 2 and out[1] == features:
        return True
    target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is not None:
        return target.tolist() in ([0, -1], [-1, features], [0, features])
    producer = node.inputs[1].producer() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    while producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    if producer is not None and producer.op_type == "Concat" and len(producer.inputs) == 2:
        tail = constant_array(producer.inputs[1])  # [batch from Shape, features] -- what converters emit
        return tail is not None and tail.tolist() == [features]
    return False


def _depthwise(node: ir.Node, weight: np.ndarray) -> bool:
    group = attribute(node, "group", 1)
    return group > 1 and weight.shape[1] == 1 and weight.shape[0] == group


def _private(value: ir.Value | None) -> bool:
    """An initializer read by one node only (slicing it changes nobody else)."""
    return value is not None and value.is_initializer() and len(value.uses()) == 1 and not value.is_graph_output()


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _static_channels(value: ir.Value | None, axis: int) -> int | None:
    if value is None or value.shape is None:
        return None
    dim = value.shape[_norm(axis, len(value.shape))]
    return dim if isinstance(dim, int) else None


def _operand_axis(array: np.ndarray, layout: Layout, rank: int | None) -> int | str | None:
    """The axis of a broadcast operand holding the channels; None if it is uniform; "bad" otherwise."""
    if array.size == 1:
        return None
    if layout.axis >= 0 and rank is None:
        return "bad"
    from_end = layout.axis if layout.axis < 0 else layout.axis - rank  # type: ignore[operator]
    axis = array.ndim + from_end  # numpy broadcasting aligns from the right
    if axis < 0 or array.shape[axis] != layout.width or array.size != layout.width:
        return "bad"
    return axis
