"""Model inspection: opset, IR version, signature, op histogram, size and MACs.

Sizes and MACs come from :mod:`onnxopt.model_stats`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import onnx_ir as ir

from onnxopt.data.input_shapes import InputShapes
from onnxopt.model_stats import ModelStats, estimate_macs


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inspect_model(model: ir.Model, input_shapes: InputShapes | None = None) -> ModelSummary:
    """Summarize ``model`` (not modified); ``input_shapes`` (``--input-shape``) shape the MAC count."""
    stats = ModelStats.of(model)
    histogram = Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    macs, unknown = estimate_macs(model, input_shapes)
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
    )


def _describe(value: ir.Value) -> dict[str, Any]:
    shape = None if value.shape is None else [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype else None, "shape": shape}
