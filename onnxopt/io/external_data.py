"""Which tensors of a ModelProto live outside it, and in which files.

One place for the walk over every tensor of a model (initializers and
tensor attributes, subgraphs included). onnx has no public function for that
walk; :func:`all_tensors` wraps its private ``_get_all_tensors`` so that no
other module depends on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx.external_data_helper


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of ``proto``: initializers and tensor attributes, in every graph."""
    return onnx.external_data_helper._get_all_tensors(proto)


def is_self_contained(proto: onnx.ModelProto) -> bool:
    """True when no tensor of ``proto`` keeps its data in an external file."""
    return not any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(proto))


def data_files(proto: onnx.ModelProto) -> set[str]:
    """The ``location`` of every external data file ``proto`` refers to, as written in the model."""
    return {
        entry.value
        for tensor in all_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def raw_tensor_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor data held in ``proto`` itself (``raw_data``)."""
    return sum(len(t.raw_data) for t in all_tensors(proto))
