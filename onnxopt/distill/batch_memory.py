"""A training batch that fits in memory: the twin keeps every activation of a batch for the gradient.

Training a TensorFlow twin holds each float tensor of the graph for every sample of a batch, besides the
gradients and the fake-quantized copies. Measured on this project's models: about 4.5x the sum of the
graph's float tensors per sample on a 416x416 detector (278 MB of tensors; 6.7 GB peak at batch 4, where
batch 32 was killed for memory on a 24 GB machine) and 8.5x on a CTC recognizer with an LSTM -- so
:data:`BYTES_PER_TENSOR_BYTE` is 8, against half the memory the system says is available; or, inside
:func:`memory_ceiling` (a tune trial under ``--max-memory``), against what is left below that ceiling, so the
trial trains on smaller batches instead of being stopped.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import onnx

from onnxopt.bench.proc_memory import status_bytes, system_available_bytes

#: Resident bytes of training per byte of the graph's float tensors, per sample (measured, rounded up).
BYTES_PER_TENSOR_BYTE = 8


def per_sample_float_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every intermediate float32 tensor's shape without its batch axis, from shape inference; tensors whose
    other dimensions are unknown (or that have none) are left out."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for info in inferred.graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if tensor.elem_type == onnx.TensorProto.FLOAT and len(dims) > 1 and all(d > 0 for d in dims[1:]):
            shapes[info.name] = tuple(dims[1:])
    return shapes


def tensor_bytes_per_sample(proto: onnx.ModelProto) -> int:
    """The bytes of every float32 tensor the graph computes for one sample (:func:`per_sample_float_shapes`)."""
    return sum(int(np.prod(shape)) * 4 for shape in per_sample_float_shapes(proto).values())


#: Resident bytes this thread's work may reach (set by :func:`memory_ceiling`), or None.
_CEILING: contextvars.ContextVar[int | None] = contextvars.ContextVar("onnxopt_memory_ceiling", default=None)
#: Of the room left below a ceiling, the part training may plan on (the estimate is rough, the stop is not).
CEILING_SHARE = 0.7


@contextlib.contextmanager
def memory_ceiling(limit: int | None) -> Iterator[None]:
    """Within the block, :func:`available_bytes` says at most twice the room left below ``limit`` bytes of
    resident memory (None: no ceiling), so training batches are sized to stay under it."""
    token = _CEILING.set(limit)
    try:
        yield
    finally:
        _CEILING.reset(token)


def available_bytes() -> int | None:
    """Twice the memory training may plan on (:func:`fitting_batch` takes half): ``MemAvailable`` of
    /proc/meminfo, or None where the system does not say; under a :func:`memory_ceiling`, no more than twice
    :data:`CEILING_SHARE` of the room left below it."""
    system = system_available_bytes()
    ceiling = _CEILING.get()
    if ceiling is None:
        return system
    room = 2 * int(max(0, ceiling - (status_bytes("VmRSS") or 0)) * CEILING_SHARE)
    return room if system is None else min(system, room)


def fitting_batch(proto: onnx.ModelProto, batch: int, available: int | None) -> int:
    """``batch``, or the largest smaller one whose estimated training memory fits half of ``available``
    bytes (:func:`available_bytes`; at least 1; ``batch`` when nothing is known)."""
    per_sample = tensor_bytes_per_sample(proto) * BYTES_PER_TENSOR_BYTE
    if available is None or per_sample <= 0:
        return batch
    return max(1, min(batch, int(available // 2 // per_sample)))


def memory_said() -> str:
    """Why a training batch was made smaller, for the run's notes."""
    if _CEILING.get() is not None:
        return "the larger one's training would not fit below --max-memory"
    return "the larger one's training would not fit in half the memory"
