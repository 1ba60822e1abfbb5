"""Reading a model: validated loading, conversion to onnx_ir, opset checks and upgrade.

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

from onnxopt.errors import ModelLoadError, UnsupportedModelError, one_line
from onnxopt.io.external_data import is_self_contained
from onnxopt.io.model_checks import structural_problem
from onnxopt.io.sparse_storage import densify

#: Oldest default-domain opset onnxopt accepts: every one. A pass that needs a newer opset has the model
#: upgraded by onnx's version converter first (the pipeline says so), or declines alone if that fails.
MIN_OPSET = 1
#: Newest default-domain opset the installed onnx knows.
MAX_OPSET = onnx.defs.onnx_opset_version()


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
        raise ModelLoadError(f"{where}: cannot read the graph: {one_line(e)}") from e


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
        raise UnsupportedModelError(f"{where}: cannot convert from opset {current} to {target}: {one_line(e)}") from e


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
        raise ModelLoadError(f"{path}: not an ONNX model or truncated ({one_line(e)})") from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found in {len(raw)} bytes)")
    self_contained = is_self_contained(proto)
    if not self_contained:
        proto = onnx.ModelProto.FromString(raw)  # keep ``raw``'s message intact; load data into a copy
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelLoadError(f"{path}: external data cannot be read: {one_line(e)}") from e
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
        raise ModelLoadError(f"{path}: invalid ONNX model: {one_line(e)}") from e
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
    """Serialize an IR model to a ModelProto (tensor data embedded).

    onnx_ir also writes a ``value_info`` entry for every initializer; those repeat the type and shape the
    tensor already carries (on a 42 KB MobileNet-style net they were 1 KB of the int8 file), so they are dropped
    from every graph. Entries for computed tensors (the shapes a reader such as Netron shows) are kept.
    """
    proto = ir.serde.serialize_model(model)
    _drop_initializer_value_info(proto.graph)
    return proto


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    initializers = {t.name for t in graph.initializer}
    if any(v.name in initializers for v in graph.value_info):
        kept = [v for v in graph.value_info if v.name not in initializers]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    for node in graph.node:
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                _drop_initializer_value_info(sub)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Deserialize a ModelProto to an IR model (tensors are wrapped, not copied)."""
    return ir.serde.deserialize_model(proto)


def opset_version(model: ir.Model) -> int:
    """The model's default-domain opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    """Return ``model`` converted to default-domain opset ``target`` by onnx's version converter."""
    if opset_version(model) >= target:
        return model
    return from_proto(_convert_opset(to_proto(model), target, "the model"))
