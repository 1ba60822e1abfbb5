"""Structural problems of a model that onnx's checker reports poorly, each named in one sentence.

The checker says "Nodes in a graph must be topologically sorted" both for a
node reading a tensor that nothing produces and for a cycle; and it accepts
ops from domains nobody can run. :func:`structural_problem` tells these apart
(main graph and every subgraph, with names from outer scopes visible inside).
"""

from __future__ import annotations

import onnx

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


def structural_problem(model: onnx.ModelProto) -> str | None:
    """The first structural problem of ``model`` as a sentence, or None."""
    local = {f.domain for f in model.functions}
    return _graph_problem(model.graph, set(), KNOWN_DOMAINS | local)


def _graph_problem(graph: onnx.GraphProto, outer: set[str], domains: frozenset[str]) -> str | None:
    defined = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    produced = {o for node in graph.node for o in node.output if o}
    for node in graph.node:
        what = f"node '{node.name}' ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"
        if node.domain not in domains:
            return f"{what} is from domain '{node.domain}', which neither onnx nor onnxruntime defines"
        for name in node.input:
            if name and name not in defined and name not in produced:
                return f"{what} reads '{name}', which no node, initializer or graph input provides"
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                problem = _graph_problem(sub, defined | produced, domains)
                if problem:
                    return f"in a subgraph of {what}: {problem}"
    cycle = _cycle(graph, defined)
    return f"the graph has a cycle through '{cycle}'" if cycle else None


def _cycle(graph: onnx.GraphProto, defined: set[str]) -> str | None:
    """A tensor on a cycle, if the nodes cannot be ordered at all (Kahn's algorithm)."""
    ready = set(defined)
    pending = list(graph.node)
    while pending:
        progress = [n for n in pending if all(not i or i in ready for i in n.input)]
        if not progress:
            return next(i for n in pending for i in n.input if i and i not in ready)
        ready.update(o for n in progress for o in n.output)
        pending = [n for n in pending if n not in progress]
    return None
