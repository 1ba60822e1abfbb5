"""TFLite flatbuffer rewrites that tf2onnx needs before it can read a model.

tf2onnx reads every constant buffer as a dense array of its tensor's shape, and knows TFLite builtins only.
Two kinds of real-world models break that, and :func:`prepare` rewrites both (and nothing else):

* **Sparse weights** (``converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]``): a constant
  with ``SparsityParameters`` stores only its nonzero values (or blocks), and tf2onnx fails with "cannot
  reshape array of size 77 into shape (8,1,1,32)". Each such tensor is densified (:func:`densify`), its
  sparsity dropped, and each ``DENSIFY`` op (sparse constant -> dense tensor) removed, its consumers reading
  the dense constant directly.
* **MediaPipe's ``Convolution2DTransposeBias``** custom op (segmentation models): a transposed convolution
  with bias, which TFLite has as a builtin since ``TRANSPOSE_CONV`` version 3 took an optional bias. It is
  rewritten to that builtin (:func:`transpose_conv_bias_geometry` for the arithmetic), which tf2onnx turns
  into an ONNX ``ConvTranspose`` with bias and which TFLite's own interpreter can run as the reference.

A model needing neither comes back as the same bytes. What cannot be rewritten faithfully is a one-line
:class:`~onnxopt.errors.UnsupportedModelError`. The rewrites use TensorFlow's TFLite schema object API
(``tensorflow.lite.python.schema_py_generated`` through ``tensorflow.lite.tools.flatbuffer_utils``).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import numpy as np

from onnxopt.convert import tf_import
from onnxopt.errors import UnsupportedModelError

TRANSPOSE_CONV_BIAS = "Convolution2DTransposeBias"  # MediaPipe's custom op
CUSTOM_REWRITES = (TRANSPOSE_CONV_BIAS,)

# TFLite TensorType -> the numpy dtype of its buffer bytes (little-endian, as TFLite stores them)
_DTYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 7: "<i2", 9: "i1", 10: "<f8", 16: "<u2"}


@dataclasses.dataclass(frozen=True)
class SparseLevel:
    """One level of a TFLite sparse tensor (a ``DimensionMetadata``): DENSE when ``segments`` is None."""

    dense_size: int = 0  # DENSE: how many entries the level has
    segments: np.ndarray | None = None  # SPARSE_CSR: entries of parent p are indices[segments[p]:segments[p+1]]
    indices: np.ndarray | None = None  # SPARSE_CSR: the coordinate, along this level's dimension, of each entry


@dataclasses.dataclass
class Prepared:
    """The model tf2onnx should read, and what was rewritten to get it."""

    data: bytes
    densified: list[str] = dataclasses.field(default_factory=list)  # sparse tensors made dense
    replaced: list[str] = dataclasses.field(default_factory=list)  # custom ops replaced with a TFLite builtin

    @property
    def changed(self) -> bool:
        return bool(self.densified or self.replaced)


def densify(
    values: np.ndarray,
    shape: Sequence[int],
    traversal_order: Sequence[int],
    block_map: Sequence[int],
    levels: Sequence[SparseLevel],
) -> np.ndarray:
    """The dense tensor of ``shape`` that TFLite's sparse encoding (``values`` + metadata) stands for.

    The format (TFLite's ``SparsityParameters``; TensorFlow's ``sparsity_format_converter.cc`` decodes it
    the same way): a tensor of rank n with b blocked dimensions is viewed as rank n + b. Dimension
    ``block_map[k]`` of size S is split into S / B_k blocks (expanded dimension ``block_map[k]``) and B_k
    entries within a block (expanded dimension n + k); B_k is the dense size of the level that traverses
    dimension n + k. ``levels[i]`` describes expanded dimension ``traversal_order[i]``; the levels nest in
    that order, like the loops of a row-major walk. Each entry of a level has a position, and the entries of
    the next level hang off it:

    * DENSE of size m: entry j (0 <= j < m) under parent position p has position p * m + j, coordinate j;
    * SPARSE_CSR: the entries under parent position p are positions s in [segments[p], segments[p + 1]),
      with coordinates indices[s] (the root's position is 0).

    The walk's leaves, in order, are ``values``; a leaf's original index along dimension d is its
    coordinate there, times B_k plus the in-block coordinate when d = ``block_map[k]``. Everything not
    reached is zero. Declines (``ValueError``) metadata that does not describe ``shape`` and
    ``values``: a level count or traversal order that is not a permutation of the n + b dimensions, sparse
    block levels, a block size that does not divide its dimension, segments or indices out of range, a
    leaf count other than ``values.size``.
    """
    rank, blocked = len(shape), len(block_map)
    total = rank + blocked
    if sorted(traversal_order) != list(range(total)) or len(levels) != total:
        raise ValueError(f"traversal order {list(traversal_order)} does not cover {total} dimensions")
    if sorted(set(block_map)) != sorted(block_map) or any(not 0 <= d < rank for d in block_map):
        raise ValueError(f"block map {list(block_map)} does not name distinct dimensions of rank {rank}")
    level_of = {dim: i for i, dim in enumerate(traversal_order)}
    block_size = []
    expanded = [int(s) for s in shape]
    for k, dim in enumerate(block_map):
        level = levels[level_of[rank + k]]
        if level.segments is not None or level.dense_size <= 0 or shape[dim] % level.dense_size:
            raise ValueError(f"block {k} of dimension {dim} is not a dense size dividing {shape[dim]}")
        block_size.append(level.dense_size)
        expanded[dim] //= level.dense_size
    expanded += block_size

    positions = np.zeros(1, np.int64)  # every path's position at the level just walked (the root: 0)
    coords: list[np.ndarray] = []  # per level walked: every path's coordinate there
    for dim, level in zip(traversal_order, levels, strict=True):
        if level.segments is None:  # DENSE
            if level.dense_size != expanded[dim]:
                raise ValueError(f"dense level of size {level.dense_size} for a dimension of {expanded[dim]}")
            size = level.dense_size
            coords = [np.repeat(c, size) for c in coords]
            coords.append(np.tile(np.arange(size, dtype=np.int64), positions.size))
            positions = (positions[:, None] * size + np.arange(size)).ravel()
            continue
        segments = np.asarray(level.segments, np.int64)
        indices = np.asarray(level.indices if level.indices is not None else [], np.int64)
        if positions.size and positions.max() + 1 >= segments.size:
            raise ValueError(f"{segments.size} segments for {positions.max() + 2} boundaries")
        starts, ends = segments[positions], segments[positions + 1]
        counts = ends - starts
        if (counts < 0).any() or (ends > indices.size).any():
            raise ValueError("segments are not non-decreasing offsets into the indices")
        first = np.repeat(starts - (np.cumsum(counts) - counts), counts)  # start, minus offset, of each parent
        positions = np.arange(int(counts.sum()), dtype=np.int64) + first
        parents = np.repeat(np.arange(counts.size), counts)
        coords = [c[parents] for c in coords]
        coords.append(indices[positions])
        if coords[-1].size and (coords[-1].min() < 0 or coords[-1].max() >= expanded[dim]):
            raise ValueError(f"sparse indices outside dimension {dim} of size {expanded[dim]}")
    values = np.asarray(values).ravel()
    if positions.size != values.size:
        raise ValueError(f"the metadata reaches {positions.size} values, the buffer holds {values.size}")
    by_dim = [coords[level_of[d]] for d in range(total)]
    index = list(by_dim[:rank])
    for k, dim in enumerate(block_map):
        index[dim] = index[dim] * block_size[k] + by_dim[rank + k]
    dense = np.zeros(tuple(int(s) for s in shape), values.dtype)
    dense[tuple(index)] = values
    return dense


def transpose_conv_bias_geometry(size: int, kernel: int, stride: int, same: bool) -> tuple[int, int]:
    """``(output size, padding before)`` of MediaPipe's ``Convolution2DTransposeBias`` along one axis.

    MediaPipe's kernel (``transpose_conv_bias.cc``): with SAME padding the total padding is
    P = max(0, kernel - (size - 1) % stride - 1), with VALID it is 0; the output has
    stride * (size - 1) + kernel - P entries and input i, tap f lands on output i * stride - floor(P / 2) + f
    (taps outside the output are dropped). TFLite's builtin ``TRANSPOSE_CONV`` given that output size and the
    same padding computes the same: its SAME padding for output size o is
    (ceil(o / stride) - 1) * stride + kernel - o, which is P because ceil(o / stride) = size (kernel - P is in
    1..stride), and it also starts floor(P / 2) before.
    """
    total = max(0, kernel - (size - 1) % stride - 1) if same else 0
    return stride * (size - 1) + kernel - total, total // 2


def prepare(data: bytes) -> Prepared:
    """``data`` with sparse constants densified and MediaPipe's transposed convolution made a builtin.

    Returns the same bytes when the model has neither. One-line :class:`UnsupportedModelError` when a sparse
    tensor or a ``Convolution2DTransposeBias`` cannot be rewritten faithfully (the message says which and why).
    """
    if not _needs_rewrite(data):
        return Prepared(data)
    tf_import.tensorflow()
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    densified = _densify_tensors(model)
    _drop_densify_ops(model)
    replaced = _rewrite_transpose_conv_bias(model)
    _drop_unused_opcodes(model)
    return Prepared(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), densified, replaced)


# ---------------------------------------------------------------------- helpers


def _opcode(code) -> tuple[int, str | None]:
    """(builtin code, custom code) of an ``OperatorCode`` table: opcodes past 127 live in ``builtin_code``."""
    builtin = max(int(code.DeprecatedBuiltinCode()), int(code.BuiltinCode()))
    custom = code.CustomCode()
    return builtin, custom.decode("utf-8", "replace") if custom else None


def _needs_rewrite(data: bytes) -> bool:
    """Whether any tensor is sparse or any opcode is DENSIFY or a custom op :func:`prepare` rewrites."""
    tf_import.tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAsModel(bytearray(data), 0)
        for i in range(model.OperatorCodesLength()):
            code, custom = _opcode(model.OperatorCodes(i))
            if code == schema.BuiltinOperator.DENSIFY or custom in CUSTOM_REWRITES:
                return True
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            if any(graph.Tensors(t).Sparsity() is not None for t in range(graph.TensorsLength())):
                return True
    except Exception:  # not a flatbuffer: the interpreter will say so
        return False
    return False


def _vector(union) -> np.ndarray | None:
    """The values of a ``SparseIndexVector`` (Int32Vector / Uint16Vector / Uint8Vector), or None."""
    if union is None or getattr(union, "values", None) is None:
        return None
    return np.asarray(union.values, np.int64)


def _levels(sparsity) -> list[SparseLevel]:
    """A ``SparsityParametersT``'s dimension metadata as :class:`SparseLevel` (SPARSE_CSR is format 1)."""
    levels = []
    for meta in sparsity.dimMetadata if sparsity.dimMetadata is not None else []:
        if meta.format == 1:
            levels.append(SparseLevel(segments=_vector(meta.arraySegments), indices=_vector(meta.arrayIndices)))
            if levels[-1].segments is None:
                raise ValueError("a SPARSE_CSR level without segments")
        else:
            levels.append(SparseLevel(dense_size=int(meta.denseSize)))
    return levels


def _ints(values) -> list[int]:
    """A flatbuffer int vector (None, a list or a numpy array) as a list."""
    return [] if values is None else [int(v) for v in values]


def _name(tensor) -> str:
    name = tensor.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _densify_tensors(model) -> list[str]:
    """Replace every sparse tensor's buffer by its dense bytes and drop its sparsity; the tensors' names."""
    done: list[str] = []
    uses: dict[int, int] = {}
    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            uses[tensor.buffer] = uses.get(tensor.buffer, 0) + 1
    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            if tensor.sparsity is None:
                continue
            name = _name(tensor)
            dtype = _DTYPES.get(tensor.type)
            buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
            if dtype is None or buffer is None or buffer.data is None:
                what = "a constant" if dtype else f"of TFLite type {tensor.type}"
                raise UnsupportedModelError(f"sparse tensor '{name}' cannot be densified: not {what} buffer")
            sparsity = tensor.sparsity
            try:
                values = np.frombuffer(bytes(np.asarray(buffer.data, np.uint8)), dtype)
                dense = densify(
                    values,
                    [int(s) for s in tensor.shape],
                    _ints(sparsity.traversalOrder),
                    _ints(sparsity.blockMap),
                    _levels(sparsity),
                )
            except ValueError as e:
                raise UnsupportedModelError(f"sparse tensor '{name}' cannot be densified: {e}") from None
            raw = np.frombuffer(dense.astype(dtype, copy=False).tobytes(), np.uint8)
            if uses[tensor.buffer] > 1:  # shared: leave the other users their buffer
                model.buffers.append(type(buffer)())
                tensor.buffer = len(model.buffers) - 1
            model.buffers[tensor.buffer].data = raw
            tensor.sparsity = None
            done.append(name)
    return done


def _builtin(model, op) -> tuple[int, str | None]:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.deprecatedBuiltinCode), int(code.builtinCode))
    custom = code.customCode
    return builtin, custom.decode("utf-8", "replace") if isinstance(custom, bytes) else custom


def _drop_densify_ops(model) -> None:
    """Remove each DENSIFY op, its consumers (and graph outputs) reading its (now dense) input instead."""
    from tensorflow.lite.python import schema_py_generated as schema

    for graph in model.subgraphs or []:
        alias: dict[int, int] = {}
        kept = []
        for op in graph.operators or []:
            if _builtin(model, op)[0] == schema.BuiltinOperator.DENSIFY and len(op.inputs) == 1:
                alias[int(op.outputs[0])] = int(op.inputs[0])
            else:
                kept.append(op)
        if not alias:
            continue
        graph.operators = kept
        for op in kept:
            op.inputs = [alias.get(int(i), int(i)) for i in op.inputs]
        graph.outputs = [alias.get(int(i), int(i)) for i in graph.outputs]


def _transpose_conv_bias_options(raw: bytes) -> tuple[int, int, int]:
    """``(padding, stride_width, stride_height)`` from a ``Convolution2DTransposeBias``'s custom options.

    MediaPipe reads the options as a ``TfLiteTransposeConvParams`` struct: int32 padding
    (``TfLitePadding``: 1 = SAME, 2 = VALID), int32 stride_width, int32 stride_height (any further fields,
    such as a fused activation, MediaPipe's kernel ignores).
    """
    if len(raw) < 12:
        raise ValueError(f"{len(raw)} bytes of custom options, not a padding and two strides (12)")
    padding, stride_w, stride_h = struct.unpack_from("<iii", raw)
    if padding not in (1, 2):
        raise ValueError(f"padding {padding} is neither SAME (1) nor VALID (2)")
    if stride_w < 1 or stride_h < 1:
        raise ValueError(f"strides {stride_w}x{stride_h} are not positive")
    return padding, stride_w, stride_h


def _rewrite_transpose_conv_bias(model) -> list[str]:
    """Replace each ``Convolution2DTransposeBias`` (input NHWC, weights OHWI, bias [O]) by ``TRANSPOSE_CONV``
    (output_shape, weights, input, bias) with the same padding and strides; the output shape is MediaPipe's
    (:func:`transpose_conv_bias_geometry`). Declines (one line naming the op) anything but float32 with
    rank-4 input and weights, a matching bias, known static spatial sizes, and well-formed options."""
    from tensorflow.lite.python import schema_py_generated as schema

    replaced = []
    opcode = None
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            code, custom = _builtin(model, op)
            if code != schema.BuiltinOperator.CUSTOM or custom != TRANSPOSE_CONV_BIAS:
                continue
            try:
                padding, stride_w, stride_h = _transpose_conv_bias_options(
                    bytes(np.asarray(op.customOptions if op.customOptions is not None else [], np.uint8))
                )
                if len(op.inputs) != 3 or len(op.outputs) != 1:
                    raise ValueError(f"{len(op.inputs)} inputs and {len(op.outputs)} outputs, not 3 and 1")
                x, w, b = (graph.tensors[int(i)] for i in op.inputs)
                out = graph.tensors[int(op.outputs[0])]
                if any(t.type != schema.TensorType.FLOAT32 for t in (x, w, b, out)):
                    raise ValueError("only float32 is supported (as in MediaPipe's kernel)")
                xs, ws, bs = ([int(s) for s in t.shape] for t in (x, w, b))
                if len(xs) != 4 or len(ws) != 4 or bs != ws[:1] or ws[3] != xs[3] or min(xs[1:3]) < 1:
                    raise ValueError(f"input {xs}, weights {ws}, bias {bs} are not NHWC, OHWI [O, kh, kw, I], [O]")
            except ValueError as e:
                raise UnsupportedModelError(
                    f"TFLite custom op {TRANSPOSE_CONV_BIAS} cannot be converted: {e}"
                ) from None
            same = padding == 1
            height, _ = transpose_conv_bias_geometry(xs[1], ws[1], stride_h, same)
            width, _ = transpose_conv_bias_geometry(xs[2], ws[2], stride_w, same)
            shape = [xs[0], height, width, ws[0]]
            if opcode is None:
                model.operatorCodes.append(
                    schema.OperatorCodeT(
                        deprecatedBuiltinCode=schema.BuiltinOperator.TRANSPOSE_CONV,
                        builtinCode=schema.BuiltinOperator.TRANSPOSE_CONV,
                        version=3,  # the version with the optional bias input
                    )
                )
                opcode = len(model.operatorCodes) - 1
            model.buffers.append(schema.BufferT(data=np.frombuffer(np.array(shape, "<i4").tobytes(), np.uint8)))
            shape_name = f"{_name(out)}/output_shape"
            graph.tensors.append(
                schema.TensorT(shape=[4], type=schema.TensorType.INT32, buffer=len(model.buffers) - 1, name=shape_name)
            )
            op.opcodeIndex = opcode
            op.inputs = [len(graph.tensors) - 1, int(op.inputs[1]), int(op.inputs[0]), int(op.inputs[2])]
            op.builtinOptionsType = schema.BuiltinOptions.TransposeConvOptions
            op.builtinOptions = schema.TransposeConvOptionsT(
                padding=schema.Padding.SAME if same else schema.Padding.VALID, strideW=stride_w, strideH=stride_h
            )
            op.customOptions = None
            op.customOptionsFormat = 0
            out.shape = shape
            signature = _ints(out.shapeSignature)
            if signature:  # keep a dynamic batch dynamic
                out.shapeSignature = [signature[0], *shape[1:]]
            replaced.append(TRANSPOSE_CONV_BIAS)
    return sorted(set(replaced))


def _drop_unused_opcodes(model) -> None:
    """Drop operator codes no operator uses (the replaced custom op's, DENSIFY), renumbering the rest."""
    used = sorted({int(op.opcodeIndex) for g in model.subgraphs or [] for op in g.operators or []})
    if len(used) == len(model.operatorCodes or []):
        return
    renumber = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            op.opcodeIndex = renumber[int(op.opcodeIndex)]
