"""Per-node latency from onnxruntime's profiler, attributed back to the model's own nodes.

onnxruntime optimizes a graph before it runs it: it fuses Q/DQ pairs into
integer kernels, converts layouts (NHWC for int8, NCHWc for float) and fuses
activations into Convs. Its profiler reports the *optimized* nodes; this
module maps them back to the node of the input model they came from:

* a fused or layout-converted node keeps its target's name, sometimes with
  ``_token_<n>`` suffixes (``conv1_token_3`` is ``conv1``);
* an NCHWc node is named after its output (``r2_nchwc`` is the node whose
  output is ``r2``);
* what is left (layout Transposes and Reorders, Q/DQ the optimizer added) is
  counted under :data:`UNATTRIBUTED`.

The timings are medians over the runs after ``warmup`` runs, in
microseconds, on the given execution providers with every graph
optimization on -- how the model will be deployed. Several models profiled
together (:func:`profile_nodes_interleaved`) run in turn, one run of each, so
their times compare. Each session reads its
graph without its weights and gets them as shared arrays
(:class:`~onnxopt.shared_weights.SharedWeightsModel`), so a model
over protobuf's 2 GB limit is profiled like any other.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxopt.errors import UnsupportedModelError, one_line
from onnxopt.runtime import session_with_empty_dims_open, share_initializers
from onnxopt.shared_weights import SharedWeightsModel

UNATTRIBUTED = "(layout and conversions)"
_TOKEN = re.compile(r"(_token_\d+)+$")
_FUSABLE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add", "Sum")


@dataclasses.dataclass
class NodeProfile:
    """Mean microseconds per run of each node of a model (by the model's node names)."""

    times: dict[str, float]
    ops: dict[str, str]  # node name -> the kernel onnxruntime ran for it (QLinearConv, FusedConv, ...)

    @property
    def total(self) -> float:
        return float(sum(self.times.values()))


def profile_nodes(model: ir.Model, feeds: Mapping[str, np.ndarray], **options: Any) -> NodeProfile:
    """Profile ``model`` on ``feeds`` and attribute each kernel's time to one of ``model``'s nodes: the
    :func:`profile_nodes_interleaved` of one model, with its keyword ``options``."""
    return profile_nodes_interleaved([model], feeds, **options)[0]


def profile_nodes_interleaved(
    models: Sequence[ir.Model],
    feeds: Mapping[str, np.ndarray],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
    warmup: int = 3,
    runs: int = 10,
    seconds: float = 0.5,
    max_runs: int = 2000,
) -> list[NodeProfile]:
    """Profile each of ``models`` on ``feeds`` and attribute each kernel's time to one of that model's nodes,
    the models run in turn, one run of each: every model's medians come from the same stretch of time, so a
    comparison between them (a node's int8 µs against its float µs) does not read a change in the machine's
    load or clock as a change of kernel. Profiled one after the other, the glyph detector's float model read
    48,112 µs in one run of the search and 36,644 µs in another.

    Each model runs at least ``runs`` times and the models together for at least ``seconds`` each (at most
    ``max_runs`` rounds); the models take the same inputs. Each kernel's time is its median over the runs after
    the ``warmup`` (robust to the spikes of a shared machine)."""
    held: list[object] = []  # each session's weights, which must outlive it
    sessions: list[ort.InferenceSession] = []
    events: list[list[dict]] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-profile-") as folder:
        try:
            for i, model in enumerate(models):
                prefix = os.path.join(folder, f"profile{i}")
                sessions.append(_profiling_session(model, prefix, providers, threads, held))
            _run_in_turn(sessions, feeds, warmup, runs, seconds * len(sessions), max_runs)
            for found in sessions:
                with open(found.end_profiling(), encoding="utf-8") as f:
                    events.append(json.load(f))
        finally:
            sessions.clear()  # the sessions go before the weights they read, on every path
            held.clear()
    return [_attributed(model, found, warmup) for model, found in zip(models, events, strict=True)]


def _run_in_turn(
    sessions: list[ort.InferenceSession],
    feeds: Mapping[str, np.ndarray],
    warmup: int,
    runs: int,
    seconds: float,
    max_runs: int,
) -> None:
    """``warmup`` runs of each session, then rounds of one run of each until ``runs`` rounds and ``seconds`` have
    passed (at most ``max_runs`` rounds)."""
    try:
        for session in sessions:
            for _ in range(warmup):
                session.run(None, dict(feeds))
        count, start = 0, time.perf_counter()
        while count < max_runs and (count < runs or time.perf_counter() - start < seconds):
            for session in sessions:
                session.run(None, dict(feeds))
            count += 1
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedModelError(f"onnxruntime cannot profile the model: {one_line(e, 200)}") from e


def _profiling_session(
    model: ir.Model, prefix: str, providers: Sequence[str], threads: int, held: list[object]
) -> ort.InferenceSession:
    """A profiling session of ``model`` that reads its weights as shared arrays (appended to ``held``, which
    must outlive the session)."""
    frozen = SharedWeightsModel(model, protect=False)  # the graph without its weights: no 2 GB protobuf limit
    graph, weights = frozen.session_source()
    held += [frozen, weights]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    share_initializers(options, weights, optimized=True, rewritable=frozen.rewritable)
    try:
        session = ort.InferenceSession(str(graph), options, providers=list(providers))
        return session_with_empty_dims_open(session, str(graph), options, providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedModelError(f"onnxruntime cannot profile the model: {one_line(e, 200)}") from e


def _attributed(model: ir.Model, events: list[dict], warmup: int) -> NodeProfile:
    """Each kernel's median time over the runs after the warm-up, attributed to one of ``model``'s nodes."""
    by_output = {v.name: n for n in model.graph for v in n.outputs if v.name}
    names = {n.name for n in model.graph if n.name}
    times: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, str] = {}
    # the warm-up runs are profiled too: each kernel's first `warmup` occurrences are skipped
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    kernel_op: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        kernel = name[: -len("_kernel_time")]
        per_kernel[kernel].append(float(event.get("dur", 0)))
        kernel_op[kernel] = str(event.get("args", {}).get("op_name", ""))
    for kernel, durations in per_kernel.items():
        node = _attribute(kernel, names, by_output)
        times[node] += float(np.median(durations[warmup:])) if len(durations) > warmup else 0.0
        if node != UNATTRIBUTED:
            ops.setdefault(node, kernel_op[kernel])
    return NodeProfile(dict(times), ops)


def _attribute(kernel: str, names: set[str], by_output: dict[str, ir.Node]) -> str:
    base = _TOKEN.sub("", kernel)
    if base in names:
        return base
    if base.endswith("_nchwc") and base[: -len("_nchwc")] in by_output:
        return _fused_root(by_output[base[: -len("_nchwc")]]).name or UNATTRIBUTED
    return UNATTRIBUTED


def _fused_root(node: ir.Node) -> ir.Node:
    """The Conv an NCHWc kernel computes when it is named after a fused activation or Sum's output."""
    while node.op_type in _FUSABLE:
        sources = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
        convs = [p for p in sources if p.op_type in ("Conv", *_FUSABLE)]
        if not convs:
            break
        node = convs[0]
    return node
