"""Model I/O: validated loading, atomic saving, opset upgrade.

Raw ``onnx`` protobuf is used only here and at the other edges (checker,
onnxruntime); everything in between works on :class:`onnx_ir.Model`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxopt.errors import ModelLoadError, OutputError, UnsupportedModelError
from onnxopt.model_checks import structural_problem
from onnxopt.packed_storage import pack
from onnxopt.sparse_storage import densify, sparsify
from onnxopt.writing import check_writable, write_bytes, write_model_with_data

#: Oldest default-domain opset onnxopt accepts.
MIN_OPSET = 9
#: Newest default-domain opset the installed onnx knows.
MAX_OPSET = onnx.defs.onnx_opset_version()
#: How initializers can be stored (see :mod:`onnxopt.sparse_storage` and :mod:`onnxopt.packed_storage`).
STORAGES = ("dense", "sparse", "packed")
#: Above this many tensor bytes, :func:`save` writes external data by default.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file read once and validated.

    ``raw`` is the ``.onnx`` file's bytes; when ``self_contained`` (no
    external data) they are the whole model, and can go straight to the
    checker and onnxruntime without re-serializing.
    """

    path: Path
    raw: bytes
    proto: onnx.ModelProto  # external data loaded
    self_contained: bool

    @property
    def opset(self) -> int:
        return proto_opset(self.proto)

    @property
    def source(self) -> bytes | str:
        """What onnxruntime and the checker should read: the bytes, or the path when data lies beside it."""
        return self.raw if self.self_contained else str(self.path)


def load(path: str | os.PathLike[str], *, target_opset: int | None = None) -> ir.Model:
    """Load and validate an ONNX model (embedded or external data).

    Raises :class:`ModelLoadError` with a one-line message for a missing,
    empty, truncated, non-ONNX or structurally invalid file, and
    :class:`UnsupportedModelError` for opsets outside ``MIN_OPSET..MAX_OPSET``
    -- unless ``target_opset`` is given, in which case an older model is first
    converted to that opset by onnx's version converter.
    """
    return to_model(read_model(Path(path)), target_opset=target_opset)


def to_model(file: ModelFile, *, target_opset: int | None = None) -> ir.Model:
    """The IR model of a read file, converted to ``target_opset`` first if given."""
    where = str(file.path)
    proto = file.proto
    if proto.graph.sparse_initializer:  # onnx_ir would drop them: make them ordinary initializers first
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        densify(proto)
    if target_opset is not None:
        if not MIN_OPSET <= target_opset <= MAX_OPSET:
            raise UnsupportedModelError(f"target opset {target_opset} is outside {MIN_OPSET}..{MAX_OPSET}")
        proto = _convert_opset(proto, target_opset, where)
    validate_opset(proto, where)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types for malformed graphs
        raise ModelLoadError(f"{where}: cannot read the graph: {_first_line(e)}") from e


def proto_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset a ModelProto imports (0 if none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _convert_opset(proto: onnx.ModelProto, target: int, where: str) -> onnx.ModelProto:
    current = proto_opset(proto)
    if current >= target:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, target)
    except Exception as e:  # the converter raises RuntimeError and bare C++ errors
        raise UnsupportedModelError(
            f"{where}: cannot convert from opset {current} to {target}: {_first_line(e)}"
        ) from e


def read_model(path: Path) -> ModelFile:
    """Read ``path`` once, parse it, load its external data, and run the checker."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from e
    if not raw:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        proto = onnx.ModelProto.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not an ONNX model or truncated ({_first_line(e)})") from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found in {len(raw)} bytes)")
    self_contained = not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(proto)
    )
    if not self_contained:
        proto = onnx.ModelProto.FromString(raw)  # keep ``raw``'s message intact; load data into a copy
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelLoadError(f"{path}: external data cannot be read: {_first_line(e)}") from e
    if proto.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{path}: IR version {proto.ir_version} is newer than this onnx supports ({onnx.IR_VERSION})"
        )
    problem = structural_problem(proto)
    if problem:
        raise ModelLoadError(f"{path}: invalid model: {problem}")
    try:
        onnx.checker.check_model(raw if self_contained else str(path))  # no re-serialization
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(f"{path}: invalid ONNX model: {_first_line(e)}") from e
    except UnicodeDecodeError as e:  # the checker's message quotes a name that is not UTF-8
        raise ModelLoadError(f"{path}: invalid ONNX model: a name or string is not valid UTF-8") from e
    return ModelFile(path, raw, proto, self_contained)


def read_supported(path: str | os.PathLike[str]) -> ModelFile:
    """:func:`read_model`, then refuse opsets outside ``MIN_OPSET..MAX_OPSET`` (what every command accepts)."""
    file = read_model(Path(path))
    validate_opset(file.proto, str(file.path))
    return file


def validate_opset(proto: onnx.ModelProto, where: str) -> None:
    """Refuse default-domain opsets onnxopt does not handle."""
    version = proto_opset(proto)
    if not version:
        raise UnsupportedModelError(f"{where}: the model imports no default-domain opset")
    if version < MIN_OPSET:
        raise UnsupportedModelError(
            f"{where}: opset {version} is older than the oldest supported ({MIN_OPSET}); "
            f"convert it with --target-opset {MIN_OPSET} or newer"
        )
    if version > MAX_OPSET:
        raise UnsupportedModelError(f"{where}: opset {version} is newer than this onnx supports ({MAX_OPSET})")


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize an IR model to a ModelProto (tensor data embedded)."""
    return ir.serde.serialize_model(model)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Deserialize a ModelProto to an IR model (tensors are wrapped, not copied)."""
    return ir.serde.deserialize_model(proto)


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
    leaves nothing behind (:mod:`onnxopt.writing`). ``external_data=None`` stores
    tensors in a side file ``<name>.data`` only when the model would exceed the
    protobuf limit.
    ``protect`` lists paths (the inputs) that must never be written over.
    ``storage="sparse"`` stores mostly-zero float initializers as
    ``SparseTensorProto`` where smaller (:mod:`onnxopt.sparse_storage`);
    ``storage="packed"`` as a bitmask plus values that a constant subgraph
    expands, which onnxruntime folds at load (:mod:`onnxopt.packed_storage`).
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
        external_data = _tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    if external_data:
        return write_model_with_data(proto, path)
    return write_bytes(path, proto.SerializeToString())


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a model on disk: the ``.onnx`` file plus every external data file it references."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in onnx.external_data_helper._get_all_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return total + sum((path.parent / name).stat().st_size for name in locations if (path.parent / name).exists())


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto))


def opset_version(model: ir.Model) -> int:
    """The model's default-domain opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    """Return ``model`` converted to default-domain opset ``target`` by onnx's version converter."""
    if opset_version(model) >= target:
        return model
    return from_proto(_convert_opset(to_proto(model), target, "the model"))


def _first_line(error: BaseException) -> str:
    """The error's message as one line (the checker spreads one message over several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
