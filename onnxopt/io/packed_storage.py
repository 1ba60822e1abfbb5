"""Packed storage of mostly-zero weights: a bitmask and the non-zero values, expanded by a constant subgraph.

``SparseTensorProto`` needs INT64 indices (the ONNX checker accepts nothing
else), so a stored non-zero costs 4 + 8 bytes and an 80 %-sparse float32
tensor only shrinks to 60 % (:mod:`onnxopt.io.sparse_storage`). Packed storage
keeps one *bit* per element and the non-zero values:

    mask    uint8[ceil(n / 8)]   bit i of byte j: element 8j + i is non-zero
    values  float[nnz + 1]       0, then the non-zeros in order

and rebuilds the dense tensor with standard ops::

    bits  = Mod(Div(Reshape(Cast<int32>(mask), [-1, 1]), [1, 2, .., 128]), 2)  # [n/8, 8]
    bits  = Slice(Reshape(bits, [-1]), 0, n)                             # 0/1 per element
    index = CumSum(bits) * bits                                          # 0, or 1..nnz
    W     = Reshape(Gather(values, index), shape)

-- about 0.925 bytes per element at 80 % zeros (23 % of dense float32). Every
input of that subgraph is a constant, so onnxruntime folds it into a dense
initializer when it creates the session: the running model is the dense one,
outputs are bit-identical, and inference pays nothing. Needs opset 11
(CumSum); tensors where packing is not smaller stay dense.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.io.initializers import convert_initializers

#: Tensors smaller than this stay dense (the subgraph is not worth it).
MIN_ELEMENTS = 1024
MIN_OPSET = 11
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def pack(proto: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """Store mostly-zero float initializers packed, in place; return ``(name, dense bytes, packed bytes)`` each.

    Raises ``ValueError`` for models below opset 11."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ValueError(f"packed storage needs opset {MIN_OPSET} or newer (the model has {opset})")
    graph = proto.graph
    decoders: list[onnx.NodeProto] = []
    packed: list[tuple[str, int, int]] = []
    for tensor, (initializers, nodes, dense_bytes, packed_bytes) in convert_initializers(graph, _packed_form):
        graph.initializer.extend(initializers)
        decoders.extend(nodes)
        packed.append((tensor.name, dense_bytes, packed_bytes))
    if not packed:
        return []
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(decoders + nodes)  # the decoders read only constants: first is topologically sound
    return packed


def _packed_form(tensor: onnx.TensorProto):
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type not in _FLOATS:
        return None
    array = numpy_helper.to_array(tensor)
    if array.size < MIN_ELEMENTS or array.ndim == 0:
        return None
    flat = array.reshape(-1)
    present = flat != 0
    values = np.concatenate([np.zeros(1, flat.dtype), flat[present]])
    mask = np.packbits(present, bitorder="little")
    packed_bytes = values.nbytes + mask.nbytes
    if packed_bytes >= 0.9 * array.nbytes:  # the subgraph and its constants cost a little too
        return None
    name = tensor.name
    n = flat.size

    def const(suffix: str, value: np.ndarray) -> tuple[str, onnx.TensorProto]:
        full = f"{name}__packed_{suffix}"
        return full, numpy_helper.from_array(value, full)

    names, inits = {}, []
    for suffix, value in (
        ("mask", mask),
        ("values", values),
        ("weights", (1 << np.arange(8, dtype=np.int32)).reshape(1, 8)),
        ("two", np.array(2, np.int32)),
        ("flat", np.array([-1], np.int64)),
        ("start", np.array([0], np.int64)),
        ("stop", np.array([n], np.int64)),
        ("axis", np.array(0, np.int64)),
        ("shape", np.array(array.shape, np.int64)),
        ("column", np.array([-1, 1], np.int64)),
    ):
        names[suffix], init = const(suffix, value)
        inits.append(init)
    t = {k: f"{name}__packed_t{k}" for k in range(9)}
    nodes = [
        helper.make_node("Cast", [names["mask"]], [t[0]], to=onnx.TensorProto.INT32),
        helper.make_node("Reshape", [t[0], names["column"]], [t[1]]),
        helper.make_node("Div", [t[1], names["weights"]], [t[2]]),
        helper.make_node("Mod", [t[2], names["two"]], [t[3]]),
        helper.make_node("Reshape", [t[3], names["flat"]], [t[4]]),
        helper.make_node("Slice", [t[4], names["start"], names["stop"]], [t[5]]),
        helper.make_node("Cast", [t[5]], [t[6]], to=onnx.TensorProto.INT64),
        helper.make_node("CumSum", [t[6], names["axis"]], [t[7]]),
        helper.make_node("Mul", [t[7], t[6]], [t[8]]),
        helper.make_node("Gather", [names["values"], t[8]], [f"{name}__packed_dense"]),
        helper.make_node("Reshape", [f"{name}__packed_dense", names["shape"]], [name]),
    ]
    for i, node in enumerate(nodes):
        node.name = f"{name}__unpack{i}"
    return inits, nodes, array.nbytes, packed_bytes
