"""A model handed to onnx.checker and onnxruntime without serializing its weights.

The per-pass guard must check and run the whole model after every rewrite.
Serializing a 100 MB model each time (and having the checker and
onnxruntime parse it again) costs several times an ``onnx.load`` +
``onnx.save``. Instead, :class:`SharedWeightsModel`:

* serializes the graph with every large initializer turned into an external
  reference to an empty placeholder file (a few KB instead of the weights);
* runs ``onnx.checker`` (full check, with shape inference) on that file --
  everything but the weight bytes, whose size and type the IR already ties
  to their declared shape and dtype;
* gives onnxruntime the weights as ``OrtValue`` views of the IR's own numpy
  arrays through ``SessionOptions.add_initializer`` -- zero-copy, so the
  session runs exactly the tensors the IR model holds;
* keeps those arrays (made read-only) so :meth:`restore` can rebuild the
  exact model later (the pipeline's rollback point).

The same frozen model backs every other onnxruntime session onnxopt opens on
an IR model (activations, the quality probe, per-node profiles, per-layer
errors): :meth:`SharedWeightsModel.runner` and
:meth:`SharedWeightsModel.session_source` can add intermediate tensors as
graph outputs and cut the graph down to what those need, and the session
options (optimization level, profiling) are the caller's. Nothing there
serializes the weights, so a model over protobuf's 2 GB limit runs the same
way as a small one.

Tensors numpy or onnxruntime cannot share (strings, 4-bit, 8-bit float,
bfloat16) and small ones stay embedded in the graph.

A shared tensor read other than as a weight (a PRelu slope, an Add or Mul
constant: :func:`rewritable_in_place`) may be rewritten in place, under its
own name, by onnxruntime's graph optimizers -- the NHWC layout transformation
of an int8 model transposes a PRelu slope ``[C, 1, 1]`` to ``[1, 1, 1, C]``.
A session with graph optimizations on copies those
(:func:`onnxopt.runtime.share_initializers`): handed to it as views, the old
buffer would replace the rewritten tensor and the node would fail to
broadcast at run time.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxopt.runtime import Runner

#: Initializers smaller than this stay embedded in the serialized graph.
SHARE_MIN_BYTES = 1024
_PLACEHOLDER = "onnxopt-shared-weights.bin"
_SHAREABLE = {
    ir.DataType.FLOAT,
    ir.DataType.FLOAT16,
    ir.DataType.DOUBLE,
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT16,
    ir.DataType.UINT16,
    ir.DataType.INT32,
    ir.DataType.UINT32,
    ir.DataType.INT64,
    ir.DataType.UINT64,
    ir.DataType.BOOL,
}
#: Inputs onnxruntime reads as weights, by op type: its optimizers fold, fuse or repack such an initializer
#: into a new tensor with a new name, and never rewrite it under its own.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "LSTM": (1, 2, 3),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
    "Gather": (0,),
}
#: Ops that decode a weight for such an input (QDQ's DequantizeLinear; int8 storage's Cast + Mul), and how
#: many of them a weight may pass through.
_DECODERS = ("DequantizeLinear", "Cast", "Mul")
_DECODER_DEPTH = 3


class SharedWeightsModel:
    """One frozen state of an IR model: its graph as a small file, its weights as shared arrays.

    ``protect`` (the guard's snapshots) makes the model's weight arrays read-only, so no later pass can
    change what :meth:`restore` returns; a session that only reads the model now (activations, a probe, a
    profile) passes ``protect=False`` and leaves the model's arrays as they were."""

    def __init__(self, model: ir.Model, *, protect: bool = True) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="onnxopt-guard-")
        folder = Path(self._folder.name)
        (folder / _PLACEHOLDER).touch()
        self.path = folder / "model.onnx"
        self.arrays: dict[str, np.ndarray] = {}
        #: shared tensors onnxruntime's optimizers may rewrite in place: an optimized session copies them
        self.rewritable: frozenset[str] = frozenset()
        rewritable: set[str] = set()
        swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
        try:
            for graph in model.graphs():
                for value in graph.initializers.values():
                    tensor = value.const_value
                    if tensor is None or tensor.dtype not in _SHAREABLE or tensor.nbytes < SHARE_MIN_BYTES:
                        continue
                    array = np.ascontiguousarray(tensor.numpy())
                    if protect:
                        array.flags.writeable = False  # the snapshot must not change under a later pass
                    assert value.name is not None
                    self.arrays[value.name] = array
                    if rewritable_in_place(value):
                        rewritable.add(value.name)
                    swapped.append((value, tensor))
                    value.const_value = ir.ExternalTensor(
                        _PLACEHOLDER,
                        0,
                        array.nbytes,
                        tensor.dtype,
                        shape=tensor.shape,
                        name=value.name,
                        base_dir=folder,
                    )
            self.graph_bytes = ir.serde.serialize_model(model).SerializeToString()
            self.rewritable = frozenset(rewritable)
        finally:
            for value, tensor in swapped:
                value.const_value = tensor
        self.path.write_bytes(self.graph_bytes)
        # element types of what `outputs=` may name (intermediate tensors and graph inputs)
        self.types: dict[str, int] = {
            v.name: v.dtype.value
            for v in itertools.chain(model.graph.inputs, (o for node in model.graph for o in node.outputs))
            if v.name and v.dtype is not None
        }
        self._views = itertools.count()

    def check(self) -> None:
        """``onnx.checker`` full check of the graph (raises ``ValidationError``/``InferenceError``)."""
        onnx.checker.check_model(str(self.path), full_check=True)

    def proto(self) -> onnx.ModelProto:
        """The frozen graph as a ModelProto: its large initializers are external references to an empty
        placeholder (their type and dims are there; their bytes are in :attr:`arrays`)."""
        return onnx.ModelProto.FromString(self.graph_bytes)

    def session_source(
        self, outputs: Sequence[str] | Mapping[str, int] | None = None, *, only_outputs: bool = False
    ) -> tuple[Path, dict[str, ort.OrtValue]]:
        """What an ``ort.InferenceSession`` needs: the graph file to open, and the weights as ``OrtValue`` views
        of :attr:`arrays` to hand it through ``SessionOptions.add_initializer`` (keep them alive as long as the
        session).

        ``outputs`` (names, or ``{name: TensorProto element type}``) become extra graph outputs, typed as the
        IR model typed them (float when it did not); with ``only_outputs`` they are the *only* outputs and
        every node they do not depend on is dropped (:func:`cut`). Only the initializers the graph still
        reads are returned. A session with graph optimizations on needs them through
        :func:`onnxopt.runtime.share_initializers`, with :attr:`rewritable`."""
        if not outputs and not only_outputs:
            path, names = self.path, None
        else:
            proto = self.proto()
            types = outputs if isinstance(outputs, Mapping) else {n: self.types.get(n) for n in outputs or ()}
            add_outputs(proto, types)
            if only_outputs:
                cut(proto, list(types))
            path = self.path.with_name(f"view-{next(self._views)}.onnx")
            path.write_bytes(proto.SerializeToString())
            names = _initializer_names(proto.graph)
        values = {
            name: ort.OrtValue.ortvalue_from_numpy(array)
            for name, array in self.arrays.items()
            if names is None or name in names
        }
        return path, values

    def runner(
        self,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        *,
        optimize: bool = False,
        threads: int = 0,
        outputs: Sequence[str] | Mapping[str, int] | None = None,
        only_outputs: bool = False,
    ) -> Runner:
        """An onnxruntime session over the graph and the shared weights: graph optimizations disabled unless
        ``optimize``; ``outputs`` and ``only_outputs`` as in :meth:`session_source`."""
        path, values = self.session_source(outputs, only_outputs=only_outputs)
        return Runner(
            path,
            providers=providers,
            optimize=optimize,
            threads=threads,
            initializers=values,
            rewritable=self.rewritable,
            keep_alive=self,
        )

    def restore(self) -> ir.Model:
        """The model as it was frozen: same graph, same weight arrays."""
        model = ir.serde.deserialize_model(onnx.ModelProto.FromString(self.graph_bytes))
        for graph in model.graphs():
            for name, value in graph.initializers.items():
                if name in self.arrays:
                    value.const_value = ir.Tensor(self.arrays[name], name=name)
        return model


def rewritable_in_place(value: ir.Value) -> bool:
    """Whether onnxruntime's graph optimizers may rewrite initializer ``value`` in place, under its own name.

    They may wherever it is read other than as a weight (:data:`_WEIGHT_INPUTS`, directly or through a few
    decoding ops): onnxruntime's transpose optimizer, pushing a layout Transpose through a PRelu, Add, Mul,
    Concat, Pad, Resize, ... transposes or reshapes the node's single-reader constant inputs in place. A
    weight is repacked into a new tensor instead (NCHWc reorders, QLinearConv's packing, Conv+Mul fusion)."""
    return not _read_as_weight(value, _DECODER_DEPTH)


def _read_as_weight(value: ir.Value, depth: int) -> bool:
    """Whether every reader of ``value`` reads it as a weight, through at most ``depth`` decoding ops."""
    if value.is_graph_output():
        return False
    for use in value.uses():
        node = use.node
        if node.domain not in ("", "ai.onnx"):
            return False
        if use.idx in _WEIGHT_INPUTS.get(node.op_type, ()):
            continue
        decodes = node.op_type in _DECODERS and depth > 0 and len(node.outputs) == 1
        if not (decodes and _read_as_weight(node.outputs[0], depth - 1)):
            return False
    return True


def add_outputs(proto: onnx.ModelProto, types: Mapping[str, int | None]) -> onnx.ModelProto:
    """``proto`` (changed in place) with ``types``' names added to its graph outputs, of those element types
    (float where ``None``); names already outputs are left as they are."""
    present = {o.name for o in proto.graph.output}
    for name, elem in types.items():
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem or onnx.TensorProto.FLOAT, None))
            present.add(name)
    return proto


def cut(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``proto`` (changed in place) cut down to computing ``names``: they become the only graph outputs and
    every node they do not depend on is dropped (onnxruntime runs every node of a graph, whatever outputs
    are asked for, so an early layer's activations would otherwise cost a whole forward pass). Graph inputs
    all stay (feeds name them); initializers no kept node reads are dropped."""
    graph = proto.graph
    wanted = set(names)
    outputs = {o.name: o for o in graph.output}
    kept_outputs = [outputs[n] for n in names if n in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed, kept = set(wanted), []
    for node in reversed(graph.node):
        if not any(o in needed for o in node.output):
            continue
        kept.append(node)
        needed.update(i for i in node.input if i)
        needed.update(_outer_reads(node))
    if len(kept) == len(graph.node):
        return proto
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return proto


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read: they must stay computed too."""
    reads: set[str] = set()
    for attr in node.attribute:
        for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in body.node:
                reads.update(i for i in inner.input if i)
                reads.update(_outer_reads(inner))
    return reads


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    """Initializer names of ``graph`` and of every subgraph in it."""
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= _initializer_names(body)
    return names
