"""Model inspection: opset, IR version, signature, op histogram, size and MACs; with ``--runtime``, what
onnxruntime actually runs (:mod:`onnxopt.bench.runtime_audit`).

Sizes and MACs come from :mod:`onnxopt.model_stats`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import onnx_ir as ir

from onnxopt.bench.runtime_audit import RuntimeAudit, audit_runtime
from onnxopt.data import RandomDataset
from onnxopt.data.input_shapes import InputShapes, check_input_shapes
from onnxopt.errors import DataError, ModelRunError, OnnxoptError, one_line
from onnxopt.model_stats import ModelStats, estimate_macs
from onnxopt.runtime import input_specs
from onnxopt.shared_weights import SharedWeightsModel

__all__ = ["ModelSummary", "audit_runtime", "count_macs", "inspect_model", "runtime_text"]


@dataclasses.dataclass
class ModelSummary:
    opset: dict[str, int]
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_histogram: dict[str, int]
    nodes: int
    parameters: int
    bytes: int
    macs: int
    macs_unknown: list[str]
    random_inputs: str  # the shapes the MAC count (and its measuring run) used: RandomDataset.shapes_line
    macs_note: str | None = None  # why nodes stay uncounted: the run on random inputs failed, and how to fix it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inspect_model(model: ir.Model, input_shapes: InputShapes | None = None) -> ModelSummary:
    """Summarize ``model`` (not modified); ``input_shapes`` (``--input-shape``) shape the MAC count."""
    stats = ModelStats.of(model)
    histogram = Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    macs, unknown, note = _count_macs(model, input_shapes)
    return ModelSummary(
        opset=dict(model.opset_imports),
        ir_version=model.ir_version,
        producer=f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        inputs=[_describe(v) for v in model.graph.inputs if not v.is_initializer()],
        outputs=[_describe(v) for v in model.graph.outputs],
        op_histogram=dict(histogram.most_common()),
        nodes=stats.nodes,
        parameters=stats.parameters,
        bytes=stats.bytes,
        macs=macs,
        macs_unknown=unknown,
        random_inputs=_random_inputs(model, input_shapes),
        macs_note=note,
    )


def _random_inputs(model: ir.Model, input_shapes: InputShapes | None) -> str:
    """The shapes random inputs (and the MAC count) take for ``model``, as one line; a ``--input-shape`` that
    names no input, or contradicts one, is an error."""
    specs = input_specs(model)
    if input_shapes:
        check_input_shapes(input_shapes, specs)
    try:
        return RandomDataset(specs, 1, seed=0, shapes=input_shapes).shapes_line()
    except DataError as e:  # a dimension fixed at 0: random inputs would be empty
        return f"none ({one_line(e)})"


def count_macs(model: ir.Model, input_shapes: InputShapes | None = None) -> tuple[int, list[str]]:
    """:func:`~onnxopt.model_stats.estimate_macs`, and where shape inference cannot follow a node (a Reshape
    target computed from the input's symbolic width, before an LSTM and its classifier) the shapes one run on
    a random sample shaped by ``input_shapes`` measures; returns (MACs per sample, nodes still not counted)."""
    macs, unknown, _ = _count_macs(model, input_shapes)
    return macs, unknown


def _count_macs(model: ir.Model, input_shapes: InputShapes | None) -> tuple[int, list[str], str | None]:
    """:func:`count_macs`, and why nodes stay uncounted when the measuring run failed (else None)."""
    macs, unknown = estimate_macs(model, input_shapes)
    if not unknown:
        return macs, unknown, None
    try:
        measured = _measured_shapes(model, unknown, input_shapes)
    except OnnxoptError as e:
        return macs, unknown, one_line(e)
    macs, unknown = estimate_macs(model, input_shapes, measured)
    return macs, unknown, None


def _measured_shapes(model: ir.Model, nodes: list[str], input_shapes: InputShapes | None) -> dict[str, list[int]]:
    """Shapes of the inputs and outputs of ``nodes`` (names, or first outputs) on one random sample, shaped
    by the input-shape rule. Raises :class:`OnnxoptError` when the model cannot run on it (a
    :class:`ModelRunError` saying which shapes it got and how to give others)."""
    wanted = [
        v.name
        for n in model.graph
        if (n.name or (n.outputs[0].name if n.outputs else None)) in nodes
        for v in [*n.inputs, *n.outputs]
        if v is not None and v.name and not v.is_initializer() and v.const_value is None
    ]
    sample = RandomDataset(input_specs(model), 1, seed=0, shapes=input_shapes)
    feeds = next(iter(sample.batches(1))).feeds
    runner = SharedWeightsModel(model, protect=False).runner(outputs=wanted)
    try:
        arrays = runner.run(feeds, wanted)
    except ModelRunError as e:
        raise sample.run_failure(e) from e
    return {name: list(a.shape) for name, a in zip(wanted, arrays, strict=True)}


def _describe(value: ir.Value) -> dict[str, Any]:
    shape = None if value.shape is None else [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype else None, "shape": shape}


def runtime_text(audit: RuntimeAudit) -> str:
    """The runtime audit for people: the kernel counts, the quantized nodes run in float, the Q/DQ and layout
    kernels left with the reason of each."""
    threads = "default" if audit.threads == 0 else str(audit.threads)
    lines = [
        f"  kernels onnxruntime runs ({audit.provider}, threads {threads}, onnxruntime {audit.onnxruntime}):",
        *[f"    {n:>5}  {kernel}" for kernel, n in audit.kernels.items()],
        f"  runtime: {audit.summary()}",
    ]
    int8 = sum(q.int8 and q.runtime_node is not None for q in audit.quantized)
    floats = audit.float_nodes
    lines.append(f"  quantized nodes: {len(audit.quantized)}, run in int8 {int8}, in float {len(floats)}")
    lines += [f"    {q.node} ({q.op_type}): {q.kernel} -- {q.reason}" for q in floats]
    lines.append(f"  QuantizeLinear / DequantizeLinear / layout kernels left: {len(audit.left)}")
    lines += [f"    {k.op_type} {k.node}: {k.reason}" for k in audit.left]
    return "\n".join(lines)
