"""Which branches of the model's data-dependent ``If`` nodes the guard data reaches.

A guard that never runs an ``If``'s else-branch cannot vouch for it. The
pipeline asks :func:`branch_coverage` which way each top-level ``If`` went on
its guard batches; with random data it draws more batches (other seeds) until
both ways are seen or a bound is hit (:func:`more_feeds_for_branches`), and
says in the run's notes which branches stayed unexercised -- never claiming
coverage it did not have. (Lossy passes leave tensors that subgraphs read
unchanged anyway: :func:`onnxopt.passes._graph_edit.subgraph_reads`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.errors import OnnxoptError
from onnxopt.shared_weights import SharedWeightsModel

#: Extra random batches drawn, at most, to reach an If branch the guard data missed.
MAX_EXTRA_BATCHES = 16


def if_conditions(model: ir.Model) -> dict[str, str]:
    """``{If node name or its first output: name of its condition tensor}`` for the main graph's If nodes
    whose condition is computed at run time (a constant condition has one branch only)."""
    conditions = {}
    for node in model.graph:
        cond = node.inputs[0] if node.op_type == "If" and node.inputs else None
        if cond is not None and cond.name and cond.const_value is None and not cond.is_initializer():
            conditions[node.name or node.outputs[0].name or "?"] = cond.name
    return conditions


def branch_coverage(
    model: ir.Model, conditions: dict[str, str], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, set[bool]]:
    """For each If of ``conditions``, the condition values seen on ``feeds`` (``{True, False}``: both branches)."""
    seen: dict[str, set[bool]] = {name: set() for name in conditions}
    if not conditions or not feeds:
        return seen
    names = sorted(set(conditions.values()))
    runner = SharedWeightsModel(model, protect=False).runner(outputs=names)  # no whole-model serialization
    for feed in feeds:
        values = dict(zip(names, runner.run(feed, names), strict=True))
        for node, cond in conditions.items():
            seen[node].update(bool(v) for v in np.asarray(values[cond]).reshape(-1))
    return seen


def more_feeds_for_branches(
    model: ir.Model,
    feeds: list[dict[str, np.ndarray]],
    draw: Callable[[int], list[dict[str, np.ndarray]]],
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """``feeds`` plus extra batches from ``draw(k)`` (the k-th extra random draw) until every If has seen both
    branches, at most :data:`MAX_EXTRA_BATCHES`; and the notes saying what the guard covered."""
    conditions = if_conditions(model)
    if not conditions:
        return feeds, []
    try:
        seen = branch_coverage(model, conditions, feeds)
        extra = 0
        while extra < MAX_EXTRA_BATCHES and any(len(v) < 2 for v in seen.values()):
            new = draw(extra)
            extra += 1
            if not new:
                break
            kept = []
            for feed in new:
                before = {k: set(v) for k, v in seen.items()}
                for node, values in branch_coverage(model, conditions, [feed]).items():
                    seen[node] |= values
                if seen != before:
                    kept.append(feed)
            feeds = feeds + kept
    except OnnxoptError as e:
        return feeds, [f"If branch coverage unknown ({e}); lossy passes leave subgraph-read tensors unchanged"]
    notes = []
    one_sided = {n: v for n, v in seen.items() if len(v) < 2}
    if one_sided:
        shown = ", ".join(f"'{n}' only {'then' if True in v else 'else' if v else 'no'}" for n, v in one_sided.items())
        notes.append(
            f"the guard data reached only one branch of {len(one_sided)} of {len(seen)} If node(s) ({shown}); the "
            "other branch was not run by the guard -- give --data that exercises it"
        )
    else:
        notes.append(f"the guard data ran both branches of all {len(seen)} If node(s)")
    return feeds, notes
