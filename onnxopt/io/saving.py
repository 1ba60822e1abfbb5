"""Saving a model: atomically, with external data past the protobuf limit, in dense, sparse or packed storage."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxopt.errors import OutputError
from onnxopt.io.external_data import data_files, raw_tensor_bytes
from onnxopt.io.packed_storage import pack
from onnxopt.io.reading import to_proto
from onnxopt.io.sparse_storage import sparsify
from onnxopt.io.writing import check_writable, write_bytes, write_model_with_data

#: How initializers can be stored (see :mod:`onnxopt.io.sparse_storage` and :mod:`onnxopt.io.packed_storage`).
STORAGES = ("dense", "sparse", "packed")
#: Above this many tensor bytes, :func:`save` writes external data by default.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def save(
    model: ir.Model | onnx.ModelProto | bytes,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    protect: tuple[str | os.PathLike[str], ...] = (),
    storage: str = "dense",
) -> Path:
    """Write ``model`` (IR, proto, or serialized bytes) to ``path`` atomically and return the path.

    The model goes to a temporary file in the target folder, which is then
    renamed over ``path``, so readers never see a partial file and a failure
    leaves nothing behind (:mod:`onnxopt.io.writing`). ``external_data=None`` stores
    tensors in a side file ``<name>.data`` only when the model would exceed the
    protobuf limit.
    ``protect`` lists paths (the inputs) that must never be written over.
    ``storage="sparse"`` stores mostly-zero float initializers as
    ``SparseTensorProto`` where smaller (:mod:`onnxopt.io.sparse_storage`);
    ``storage="packed"`` as a bitmask plus values that a constant subgraph
    expands, which onnxruntime folds at load (:mod:`onnxopt.io.packed_storage`).
    """
    path = Path(path)
    for kept in protect:
        if path.exists() and Path(kept).exists() and path.resolve() == Path(kept).resolve():
            raise OutputError(f"{path}: refusing to write over the input model (use --in-place)")
    check_writable(path.parent if str(path.parent) else Path("."))
    if storage not in STORAGES:
        raise OutputError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    if isinstance(model, bytes) and not external_data and storage == "dense":
        return write_bytes(path, model)
    if isinstance(model, bytes):
        model = onnx.ModelProto.FromString(model)
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    if storage in ("sparse", "packed"):
        proto = onnx.ModelProto.FromString(proto.SerializeToString())  # leave the caller's proto alone
        try:
            if storage == "sparse":
                sparsify(proto)
            else:
                pack(proto)
        except ValueError as e:
            raise OutputError(f"--storage {storage}: {e}") from e
    if external_data is None:
        external_data = raw_tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    if external_data:
        return write_model_with_data(proto, path)
    return write_bytes(path, proto.SerializeToString())


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a model on disk: the ``.onnx`` file plus every external data file it references."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = data_files(proto)
    return total + sum((path.parent / name).stat().st_size for name in locations if (path.parent / name).exists())
