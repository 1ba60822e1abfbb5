"""Shape annotation: onnx shape inference results copied onto the IR's tensor values.

Passes need ranks and channel counts (``fold-bn`` needs a BN input's rank to
broadcast its Mul+Add). onnx_ir's ``ShapeInferencePass`` would do this, but
it rewrites sequence-typed values as tensors (onnxruntime then rejects the
model), so only values that are tensors, or untyped, take what inference
found; nothing else in the model changes.
"""

from __future__ import annotations

import functools

import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api


def annotate_shapes(model: ir.Model) -> int:
    """Add inferred dtypes/shapes to the main graph's tensor values; return how many stay unknown."""
    infer = functools.partial(onnx.shape_inference.infer_shapes, strict_mode=False, data_prop=True)
    try:
        inferred = call_onnx_api(infer, model)
    except Exception:
        inferred = None
    if inferred is not None:
        values = {v.name: v for node in model.graph for v in node.outputs if v.name}
        for info in inferred.graph.value_info:
            value = values.get(info.name)
            if value is None or not info.type.HasField("tensor_type"):
                continue
            if value.type is not None and not isinstance(value.type, ir.TensorType):
                continue
            tensor_type = info.type.tensor_type
            if value.dtype is None and tensor_type.elem_type:
                value.dtype = ir.DataType(tensor_type.elem_type)
            if value.shape is None and tensor_type.HasField("shape"):
                value.shape = ir.serde.deserialize_type_proto_for_shape(info.type)
    return sum(1 for node in model.graph for v in node.outputs if v.shape is None)
