"""Activations through onnxruntime: a model's intermediate tensors on data, one batch at a time.

Passes that learn from data (``reconstruct``; later the quantizer's
calibration) never run onnxruntime themselves: they ask the pipeline's
Context, which calls :func:`activations`. The model is serialized with the
requested tensors added as graph outputs, run with graph optimizations
disabled (so the tensors are the graph's own), and every batch is yielded
as ``{name: array}`` -- nothing is kept between batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.data import Dataset, batch_size_for, fixed_batch
from onnxopt.runtime import Runner, TensorSpec


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


def activations(
    model: ir.Model, names: Sequence[str], dataset: Dataset, *, limit: int | None = None, batch_size: int = 32
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for each batch of ``dataset`` (about ``limit`` samples)."""
    runner = Runner(expose(model, names).SerializeToString())
    fixed = fixed_batch(runner.inputs)
    batch = batch_size_for(runner.inputs, batch_size)
    for item in dataset.batches(batch, limit, exact=fixed is not None):
        arrays = runner.run(item.feeds, list(names))
        yield dict(zip(names, arrays, strict=True))


class RangeCollector:
    """Streaming activation ranges per tensor: running min/max, and (for percentiles) a uniform sample.

    Memory does not grow with the number of batches: with ``sample_size`` set,
    each tensor keeps a uniform random sample of at most that many values of
    everything seen (reservoir sampling, Algorithm R, vectorized per batch).
    """

    def __init__(self, names: Sequence[str], *, sample_size: int = 0, seed: int = 0) -> None:
        self.low = dict.fromkeys(names, np.inf)
        self.high = dict.fromkeys(names, -np.inf)
        self.samples: dict[str, np.ndarray] = {}
        self.seen = dict.fromkeys(names, 0)
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, array: np.ndarray) -> None:
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        flat = flat[np.isfinite(flat)]
        if not flat.size:
            return
        self.low[name] = min(self.low[name], float(flat.min()))
        self.high[name] = max(self.high[name], float(flat.max()))
        if self.sample_size:
            self._reservoir(name, flat)
        self.seen[name] += flat.size

    def _reservoir(self, name: str, flat: np.ndarray) -> None:
        reservoir = self.samples.get(name, np.empty(0, np.float32))
        room = self.sample_size - reservoir.size
        if room > 0:  # still filling: take values as they come
            reservoir = np.concatenate([reservoir, flat[:room]])
            flat, start = flat[room:], self.seen[name] + room
        else:
            start = self.seen[name]
        if flat.size:
            # Value number i (1-based over the stream) replaces a random slot with probability k / i.
            slots = (self.rng.random(flat.size) * (start + 1 + np.arange(flat.size))).astype(np.int64)
            hit = slots < self.sample_size
            reservoir[slots[hit]] = flat[hit]  # later values win ties, as in the sequential algorithm
        self.samples[name] = reservoir

    def range(self, name: str, percentile: float | None = None) -> tuple[float, float]:
        """(low, high): the observed extremes, or the ``percentile`` / ``100 - percentile`` quantiles."""
        if percentile is None or name not in self.samples:
            return self.low[name], self.high[name]
        values = self.samples[name]
        return float(np.percentile(values, 100 - percentile)), float(np.percentile(values, percentile))
