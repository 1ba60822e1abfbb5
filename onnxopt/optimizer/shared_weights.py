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

Tensors numpy or onnxruntime cannot share (strings, 4-bit, 8-bit float,
bfloat16) and small ones stay embedded in the graph.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
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


class SharedWeightsModel:
    """One frozen state of an IR model: its graph as a small file, its weights as shared arrays."""

    def __init__(self, model: ir.Model) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="onnxopt-guard-")
        folder = Path(self._folder.name)
        (folder / _PLACEHOLDER).touch()
        self.path = folder / "model.onnx"
        self.arrays: dict[str, np.ndarray] = {}
        swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
        try:
            for graph in model.graphs():
                for value in graph.initializers.values():
                    tensor = value.const_value
                    if tensor is None or tensor.dtype not in _SHAREABLE or tensor.nbytes < SHARE_MIN_BYTES:
                        continue
                    array = np.ascontiguousarray(tensor.numpy())
                    array.flags.writeable = False  # the snapshot must not change under a later pass
                    assert value.name is not None
                    self.arrays[value.name] = array
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
        finally:
            for value, tensor in swapped:
                value.const_value = tensor
        self.path.write_bytes(self.graph_bytes)

    def check(self) -> None:
        """``onnx.checker`` full check of the graph (raises ``ValidationError``/``InferenceError``)."""
        onnx.checker.check_model(str(self.path), full_check=True)

    def runner(self, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Runner:
        """An onnxruntime session (optimizations disabled) over the graph and the shared weights."""
        values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in self.arrays.items()}
        return Runner(self.path, providers=providers, initializers=values)

    def restore(self) -> ir.Model:
        """The model as it was frozen: same graph, same weight arrays."""
        model = ir.serde.deserialize_model(onnx.ModelProto.FromString(self.graph_bytes))
        for graph in model.graphs():
            for name, value in graph.initializers.items():
                if name in self.arrays:
                    value.const_value = ir.Tensor(self.arrays[name], name=name)
        return model
