"""Activations through onnxruntime: a model's intermediate tensors on data, one batch at a time.

Passes that learn from data (``reconstruct``; later the quantizer's
calibration) never run onnxruntime themselves: they ask the pipeline's
Context, which calls :func:`activations`. The model's graph is serialized
without its weights (:class:`~onnxopt.shared_weights.SharedWeightsModel`:
they reach onnxruntime as shared arrays, so a model over protobuf's 2 GB
limit works too), the requested tensors added as graph outputs and the graph
cut down to what they need, run with graph optimizations disabled (so the
tensors are the graph's own), and every batch is yielded as
``{name: array}`` -- nothing is kept between batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.data import Dataset, batch_size_for, fixed_batch
from onnxopt.runtime import TensorSpec
from onnxopt.shared_weights import SharedWeightsModel, cut


def expose(model: ir.Model, names: Sequence[str]) -> onnx.ModelProto:
    """``model`` as a ModelProto with ``names`` added to its graph outputs (float unless typed otherwise)."""
    proto = io.to_proto(model)
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name in present:
            continue
        value = values.get(name)
        elem = value.dtype.value if value is not None and value.dtype is not None else onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return proto


def input_specs(model: ir.Model) -> list[TensorSpec]:
    """The model's data inputs (initializers excluded) as :class:`TensorSpec` -- what a Dataset is shaped by."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dims = tuple(d if isinstance(d, int) else str(d) for d in value.shape) if value.shape is not None else None
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        specs.append(TensorSpec(value.name, np.dtype(dtype), dims))
    return specs


def prefix(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``proto`` (changed in place) cut down to computing ``names``: they become the only graph outputs and
    every node they do not depend on is dropped (onnxruntime runs every node of a graph, whatever outputs
    are asked for, so an early layer's activations would otherwise cost a whole forward pass). Graph inputs
    all stay (feeds name them); initializers no kept node reads are dropped."""
    return cut(proto, names)


def activations(
    model: ir.Model, names: Sequence[str], dataset: Dataset, *, limit: int | None = None, batch_size: int = 32
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for each batch of ``dataset`` (about ``limit`` samples); only the part of the
    graph those tensors depend on runs."""
    runner = SharedWeightsModel(model, protect=False).runner(outputs=list(names), only_outputs=True)
    fixed = fixed_batch(runner.inputs)
    batch = batch_size_for(runner.inputs, batch_size)
    for item in dataset.batches(batch, limit, exact=fixed is not None):
        arrays = runner.run(item.feeds, list(names))
        yield dict(zip(names, arrays, strict=True))
