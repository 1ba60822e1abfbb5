"""A training batch that fits in memory: the twin keeps every activation of a batch for the gradient.

Training a TensorFlow twin holds each float tensor of the graph for every sample of a batch, besides the
gradients and the fake-quantized copies. Measured on this project's models: about 4.5x the sum of the
graph's float tensors per sample on a 416x416 detector (278 MB of tensors; 6.7 GB peak at batch 4, where
batch 32 was killed for memory on a 24 GB machine) and 8.5x on a CTC recognizer with an LSTM -- so
:data:`BYTES_PER_TENSOR_BYTE` is 8, against half the memory the system says is available.
"""

from __future__ import annotations

import numpy as np
import onnx

#: Resident bytes of training per byte of the graph's float tensors, per sample (measured, rounded up).
BYTES_PER_TENSOR_BYTE = 8


def tensor_bytes_per_sample(proto: onnx.ModelProto) -> int:
    """The bytes of every float32 tensor the graph computes for one sample (shape inference, batch axis left
    out); tensors whose other dimensions are unknown count nothing."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    total = 0
    for info in inferred.graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if tensor.elem_type == onnx.TensorProto.FLOAT and len(dims) > 1 and all(d > 0 for d in dims[1:]):
            total += int(np.prod(dims[1:])) * 4
    return total


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo, or None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fitting_batch(proto: onnx.ModelProto, batch: int, available: int | None) -> int:
    """``batch``, or the largest smaller one whose estimated training memory fits half of ``available``
    bytes (at least 1; ``batch`` when nothing is known)."""
    per_sample = tensor_bytes_per_sample(proto) * BYTES_PER_TENSOR_BYTE
    if available is None or per_sample <= 0:
        return batch
    return max(1, min(batch, int(available // 2 // per_sample)))
