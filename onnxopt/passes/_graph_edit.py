"""Small graph-editing helpers shared by passes (constants, fresh names, weight cloning)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's tensor as numpy if it is a true constant (not an overridable graph input)."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    return None if tensor is None else tensor.numpy()


class NameSource:
    """Fresh value names that collide with nothing in the model."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph in model.graphs():
            self._taken.update(v.name for v in graph.inputs if v.name)
            self._taken.update(graph.initializers)
            for node in graph:
                self._taken.update(v.name for v in node.outputs if v.name)

    def fresh(self, base: str) -> str:
        base = base or "value"
        for i in itertools.count():
            name = base if i == 0 else f"{base}_{i}"
            if name not in self._taken:
                self._taken.add(name)
                return name
        raise AssertionError("unreachable")


def name_unnamed_nodes(model: ir.Model, names: NameSource) -> None:
    """Give every unnamed main-graph node a fresh name (passes that record or exclude nodes by name need one)."""
    for node in model.graph:
        if not node.name:
            node.name = names.fresh(node.op_type)


def set_constant_input(node: ir.Node, index: int, array: np.ndarray, names: NameSource, suffix: str) -> None:
    """Make input ``index`` of ``node`` the constant ``array``.

    An initializer read by this node alone is updated in place; a shared one
    (or a Constant node's output, or a missing optional input) is never
    changed under its other users: a new initializer is made for this node.
    """
    graph = node.graph
    assert graph is not None
    current = node.inputs[index] if index < len(node.inputs) else None
    if current is not None and current.is_initializer() and len(current.uses()) == 1 and not current.is_graph_output():
        current.const_value = ir.tensor(array, name=current.name)
        current.shape = ir.Shape(array.shape)
        return
    base = current.name if current is not None and current.name else f"{node.name or node.op_type}_input{index}"
    value = add_initializer(graph, names.fresh(f"{base}_{suffix}"), array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if current is not None:
        drop_unused_initializers(graph, [current])


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer ``name`` holding ``array`` (dtype and shape set), registered in ``graph``."""
    value = ir.Value(
        name=name,
        const_value=ir.tensor(array, name=name),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
    )
    graph.register_initializer(value)
    return value


def attribute(node: ir.Node, name: str, default: object) -> object:
    """An attribute's Python value, or ``default`` when absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def bypass_node(graph: ir.Graph, node: ir.Node, x: ir.Value, y: ir.Value, *, x_now_equals_y: bool = False) -> None:
    """Remove ``node`` so ``y``'s readers read ``x`` (``x`` takes ``y``'s name if ``y`` is a graph output).

    ``x_now_equals_y``: a fold rewrote ``x``'s producer so ``x`` now holds
    ``y``'s values; ``x`` then takes ``y``'s name, so every name that survives
    an optimization keeps its meaning (what per-layer comparison relies on).
    """
    name = y.name
    replace_value(y, x)
    remove_node_and_orphans(graph, node)
    if x_now_equals_y and not x.is_graph_input() and x.name != name:
        y.name = None
        x.name = name


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of ``old`` -- nodes and graph outputs -- read ``new``.

    When ``old`` is a graph output, ``new`` takes its name so the model's
    signature does not change.
    """
    is_output = old.is_graph_output()
    name = old.name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if is_output:
        old.name = None
        new.name = name


def copy_type(source: ir.Value, target: ir.Value) -> None:
    """Give ``target`` the dtype and shape of ``source`` where they are known."""
    if source.dtype is not None:
        target.dtype = source.dtype
    if source.shape is not None:
        target.shape = source.shape


def remove_node_and_orphans(graph: ir.Graph, node: ir.Node) -> None:
    """Remove ``node`` and the initializers that only it read (so no separate cleanup pass has to)."""
    inputs = [v for v in node.inputs if v is not None]
    graph.remove(node, safe=True)
    drop_unused_initializers(graph, inputs)


def drop_unused_initializers(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Delete those of ``values`` that are initializers nothing reads any more, and the Constant nodes
    (converters store weights in them) whose output nothing reads any more."""
    for value in values:
        producer = value.producer()
        if (
            producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")
            and producer.graph is graph and not value.uses() and not value.is_graph_output()
        ):  # fmt: skip
            graph.remove(producer, safe=True)
            continue
        if (
            value.is_initializer()
            and not value.uses()
            and not value.is_graph_input()
            and not value.is_graph_output()
            and value.name in graph.initializers
        ):
            del graph.initializers[value.name]


def subgraph_reads(graph: ir.Graph) -> set[int]:
    """``id`` of every value of ``graph`` that a node inside one of its subgraphs (If/Loop/Scan bodies, at
    any depth) reads from the outer scope: lossy passes leave those tensors' meaning alone, since the
    guard may never run the branch that reads them."""
    reads: set[int] = set()
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                bodies = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                bodies = list(attr.value)
            else:
                continue
            for body in bodies:
                for inner in ir.traversal.RecursiveGraphIterator(body):
                    reads.update(id(v) for v in inner.inputs if v is not None)
    return reads
