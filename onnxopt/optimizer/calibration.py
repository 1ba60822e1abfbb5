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

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.data import Dataset, batch_size_for, fixed_batch
from onnxopt.shared_weights import SharedWeightsModel


def activations(
    model: ir.Model,
    names: Sequence[str],
    dataset: Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 32,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for each batch of ``dataset`` (about ``limit`` samples); only the part of the
    graph those tensors depend on runs. With ``keep``, only the batches whose index it accepts are run and
    yielded (a pass scoring on the batches it held back from fitting)."""
    runner = SharedWeightsModel(model, protect=False).runner(outputs=list(names), only_outputs=True)
    fixed = fixed_batch(runner.inputs)
    batch = batch_size_for(runner.inputs, batch_size)
    for index, item in enumerate(dataset.batches(batch, limit, exact=fixed is not None)):
        if keep is not None and not keep(index):
            continue
        arrays = runner.run(item.feeds, list(names))
        yield dict(zip(names, arrays, strict=True))
