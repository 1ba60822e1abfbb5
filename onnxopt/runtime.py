"""onnxruntime sessions for verification: one place that creates them; and the input specs sessions and data
are shaped by.

Verification sessions run with every onnxruntime graph optimization DISABLED,
so a comparison measures what onnxopt's rewrite did, not what onnxruntime's
own fusions would have hidden or added.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.errors import ModelRunError, UnsupportedModelError, one_line

if TYPE_CHECKING:
    import onnx_ir as ir

ort.set_default_logger_severity(4)  # its warnings are not ours to print; its errors reach us as exceptions


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape (ints, or strings for symbolic dims) of a graph input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None


class Runner:
    """An onnxruntime session over one model, graph optimizations disabled.

    ``model`` is a ModelProto, serialized bytes, or a path; construction
    fails with :class:`UnsupportedModelError` when onnxruntime refuses the
    model (an unknown op, a type it has no kernel for). ``initializers``
    replace the model's initializers of those names without copying (the
    session keeps them alive); those named in ``rewritable`` are copied by an
    optimized session (:func:`share_initializers`).
    """

    def __init__(
        self,
        model: onnx.ModelProto | bytes | str | os.PathLike[str],
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        optimize: bool = False,
        threads: int = 0,
        initializers: dict[str, ort.OrtValue] | None = None,
        rewritable: Collection[str] = (),
        keep_alive: object = None,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.intra_op_num_threads = threads
        options.log_severity_level = 4
        self._initializers = dict(initializers or {})  # must outlive the session
        self._keep_alive = keep_alive  # e.g. the folder of a graph file the session reads
        share_initializers(options, self._initializers, optimized=optimize, rewritable=rewritable)
        source: bytes | str
        if isinstance(model, onnx.ModelProto):
            source = model.SerializeToString()
        elif isinstance(model, bytes):
            source = model
        else:
            source = os.fspath(model)
        try:
            session = ort.InferenceSession(source, options, providers=list(providers))
            self.inputs = [tensor_spec(i) for i in session.get_inputs()]  # as declared: a dimension 0 stays 0
            self.session = session_with_empty_dims_open(session, source, options, providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise UnsupportedModelError(f"onnxruntime cannot run the model: {one_line(e, 400)}") from e
        self.outputs = [tensor_spec(o) for o in self.session.get_outputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run one batch and return the requested outputs (all by default)."""
        try:
            return self.session.run(list(outputs) if outputs else None, dict(feeds))
        except Exception as e:
            raise ModelRunError(f"onnxruntime failed to run the model: {ort_error_text(e, 400)}") from e


#: What onnxruntime puts before what went wrong: its status code, and the C++ source line and function.
_ORT_NOISE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |\S+\.(?:h|cc|cpp):\d+ (?:[\w:~<>]+\([^()]*\) )?")


def ort_error_text(error: BaseException | object, limit: int | None = 300) -> str:
    """onnxruntime's message for ``error`` as :func:`~onnxopt.errors.one_line` text, less what only its
    developers read (``[ONNXRuntimeError] : 1 : FAIL :``, the source file and C++ function that raised), so
    the cut keeps what went wrong (``Input shape:{1,3,48,48}, requested shape:{-1,46080}``)."""
    return one_line(_ORT_NOISE.sub("", " ".join(str(error).split())) or error, limit)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}


def share_initializers(
    options: ort.SessionOptions,
    values: dict[str, ort.OrtValue],
    *,
    optimized: bool,
    rewritable: Collection[str] = (),
) -> None:
    """Hand ``values`` to a session made with ``options``, without copying them (but ``rewritable``'s).

    ``add_initializer`` makes the session run on the OrtValues' own buffers: all a session without graph
    optimizations needs. onnxruntime's graph optimizers, though, read initializer data from the graph itself
    (where shared weights are references to an empty placeholder): with ``optimized``,
    ``add_external_initializers`` puts the same buffers there too. Both are views (measured on a 256 MB
    weight: 5 MB more, against 256 MB for ``add_external_initializers`` alone). The caller keeps ``values``
    alive as long as the session.

    ``rewritable`` names initializers those optimizers may rewrite in place, under their own name
    (:func:`onnxopt.shared_weights.rewritable_in_place`): the NHWC layout transformation of an int8 model
    transposes a PRelu slope ``[C, 1, 1]`` to ``[1, 1, 1, C]``. ``add_initializer`` would then hand the kernel
    the old buffer, in the old shape, and the node fails to broadcast at run time. An optimized session gets
    those through ``add_external_initializers`` alone, which onnxruntime copies into the graph it rewrites."""
    for name, value in values.items():
        if not (optimized and name in rewritable):
            options.add_initializer(name, value)
    if optimized and values:
        options.add_external_initializers(list(values), list(values.values()))


def session_with_empty_dims_open(
    session: ort.InferenceSession, source: bytes | str, options: ort.SessionOptions, providers: Sequence[str]
) -> ort.InferenceSession:
    """``session``, or -- when a graph input has a dimension fixed at 0 -- a session over ``source`` with such
    dimensions unknown instead (on the graph's inputs, outputs and value_info).

    onnxruntime runs a dimension fixed at 0 on empty tensors only, which compare and time nothing; the size
    ``--input-shape`` or ``--data`` gives is run as if the dimension were symbolic (the model file keeps its
    0, and the session's shape checks still apply to every other dimension). A model that cannot be copied
    into one protobuf keeps ``session``."""
    if not any(0 in (i.shape or ()) for i in session.get_inputs()):
        return session
    try:
        model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
        for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            for dim in value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else ():
                if dim.HasField("dim_value") and dim.dim_value == 0:
                    dim.Clear()
        relaxed = model.SerializeToString()
    except Exception:  # past the protobuf limit, or external data not beside the graph: as declared, then
        return session
    return ort.InferenceSession(relaxed, options, providers=list(providers))


def input_specs(model: ir.Model) -> list[TensorSpec]:
    """The model's data inputs (initializers excluded) as :class:`TensorSpec` -- what a Dataset is shaped by."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dims = tuple(d if isinstance(d, int) else str(d) for d in value.shape) if value.shape is not None else None
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        specs.append(TensorSpec(value.name, np.dtype(dtype), dims))
    return specs


def tensor_spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = np.dtype(_ORT_TYPES.get(arg.type, np.float32))
    shape = tuple(arg.shape) if arg.shape is not None else None
    return TensorSpec(arg.name, dtype, shape)
