"""Model files: read and validate, write atomically, external data, sparse and packed storage.

``from onnxopt import io`` is how the rest of onnxopt reaches model files;
the functions live in :mod:`.reading` (load, opsets), :mod:`.validation`
(the one validation every command runs) and :mod:`.saving` (atomic save,
storage formats, file sizes).
"""

from __future__ import annotations

from onnxopt.io.reading import (
    MAX_OPSET,
    MIN_OPSET,
    ModelFile,
    from_proto,
    load,
    opset_version,
    proto_opset,
    read_model,
    read_supported,
    to_model,
    to_proto,
    upgrade_opset,
    validate_opset,
)
from onnxopt.io.saving import EXTERNAL_DATA_THRESHOLD, STORAGES, file_bytes, save
from onnxopt.io.validation import ValidModel, validate
from onnxopt.io.writing import check_writable

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "MAX_OPSET",
    "MIN_OPSET",
    "STORAGES",
    "ModelFile",
    "ValidModel",
    "check_writable",
    "file_bytes",
    "from_proto",
    "load",
    "opset_version",
    "proto_opset",
    "read_model",
    "read_supported",
    "save",
    "to_model",
    "to_proto",
    "upgrade_opset",
    "validate",
    "validate_opset",
]
