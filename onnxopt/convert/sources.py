"""Each source format, converted through tf2onnx, with a reference that runs the source framework itself.

* **Keras 3** (``.keras``, legacy ``.h5``): ``tf2onnx.convert.from_keras`` fails on Keras 3 models
  (a KeyError on a ``keras_tensor``), so the model is wrapped in a ``tf.function`` with a dynamic-batch
  input signature and converted with ``from_function``. Reference: the Keras model, ``training=False``.
* **SavedModel** (a folder with ``saved_model.pb``): its ``serving_default`` signature (or its only
  one), wrapped the same way. Reference: the signature's concrete function.
* **TFLite** (``.tflite``, float, float16-weight or integer-quantized): ``tf2onnx.convert.from_tflite``,
  after :mod:`onnxopt.convert.tflite_rewrite` densified sparse weights and made MediaPipe's
  ``Convolution2DTransposeBias`` a builtin. Reference: ``tf.lite.Interpreter``, one sample at a time
  (TFLite graphs usually have a fixed batch of 1).

Inputs and outputs keep the source's names (tf2onnx would call outputs ``Identity:0``). With ``nchw``,
rank-4 float inputs become NCHW (tf2onnx's ``inputs_as_nchw``, whose transpose optimizer then removes the
Transposes that leaves behind); the reference still sees NHWC.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx

from onnxopt.convert import tf_import, tflite_rewrite
from onnxopt.errors import ConversionError, ModelLoadError, UnsupportedModelError, one_line

Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclasses.dataclass
class Converted:
    """A converted model and how to check it against its source."""

    proto: onnx.ModelProto
    reference: Reference  # feeds in the ONNX model's layout -> the source's outputs
    kind: str  # keras, savedmodel, tflite-float, tflite-int8
    tolerance: list[float]  # per output: the largest |onnx - source| allowed
    relative: bool  # tolerance is relative to each output's max |value| (float sources)
    per_sample: bool = False  # the reference takes one sample at a time
    notes: list[str] = dataclasses.field(default_factory=list)  # what was rewritten before tf2onnx, and why


def detect(path: Path) -> str:
    """``keras``, ``savedmodel`` or ``tflite`` from the path, or a one-line error."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path}: a folder without saved_model.pb is not a SavedModel")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise ModelLoadError(f"{path}: not a Keras (.keras/.h5), TFLite (.tflite) or SavedModel (folder) source")


def from_keras_file(path: Path, opset: int, nchw: bool) -> Converted:
    keras = tf_import.keras()
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile errors, h5py errors...
        raise ModelLoadError(f"{path}: cannot load the Keras model: {one_line(e)}") from e
    return from_keras_model(model, opset, nchw)


def from_keras_model(model, opset: int, nchw: bool) -> Converted:
    """A loaded Keras model (also what distillation converts its student with)."""
    tf = tf_import.tensorflow()
    inputs = list(model.inputs)
    names = _unique([_clean(getattr(t, "name", "") or f"input_{i}") for i, t in enumerate(inputs)])
    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=n) for t, n in zip(inputs, names, strict=True)]

    def call(*xs):
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    function = tf.function(call, input_signature=specs)
    outputs = _unique([_clean(n) for n in getattr(model, "output_names", [])] or ["output"])
    proto = _tf2onnx(lambda t: t.convert.from_function(function, input_signature=specs, opset=opset,
                                                       inputs_as_nchw=_nchw_names(specs, nchw)))  # fmt: skip
    _rename(proto, names, outputs)

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        xs = [_to_nhwc(feeds[n], n in _nchw_names(specs, nchw)) for n in names]
        result = model(xs if len(xs) > 1 else xs[0], training=False)
        return [np.asarray(r) for r in (result if isinstance(result, (list, tuple)) else [result])]

    return Converted(proto, reference, "keras", [1e-4] * len(proto.graph.output), relative=True)


def from_saved_model(path: Path, opset: int, nchw: bool) -> Converted:
    tf = tf_import.tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {one_line(e)}") from e
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ConversionError(f"{path}: the SavedModel has no signature to convert (save it with a serving signature)")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    concrete = signatures[key]
    spec_map = concrete.structured_input_signature[1]
    names = sorted(spec_map)
    specs = [tf.TensorSpec((None, *spec_map[n].shape[1:]), spec_map[n].dtype, name=_clean(n)) for n in names]
    output_keys = sorted(concrete.structured_outputs) if isinstance(concrete.structured_outputs, dict) else None

    def call(*xs):
        result = concrete(**dict(zip(names, xs, strict=True)))
        return [result[k] for k in output_keys] if output_keys else result

    function = tf.function(call, input_signature=specs)
    proto = _tf2onnx(lambda t: t.convert.from_function(function, input_signature=specs, opset=opset,
                                                       inputs_as_nchw=_nchw_names(specs, nchw)))  # fmt: skip
    _rename(proto, [s.name for s in specs], [_clean(k) for k in output_keys] if output_keys else None)
    nchw_inputs = _nchw_names(specs, nchw)

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        kwargs = {n: tf.constant(_to_nhwc(feeds[_clean(n)], _clean(n) in nchw_inputs)) for n in names}
        result = concrete(**kwargs)
        values = [result[k] for k in output_keys] if output_keys else result
        return [np.asarray(v) for v in (values if isinstance(values, (list, tuple)) else [values])]

    return Converted(proto, reference, "savedmodel", [1e-4] * len(proto.graph.output), relative=True)


def from_tflite(path: Path, opset: int, nchw: bool) -> Converted:
    """A TFLite file, first rewritten where tf2onnx cannot read it (:func:`tflite_rewrite.prepare`: sparse
    weights densified, MediaPipe's ``Convolution2DTransposeBias`` made TFLite's builtin ``TRANSPOSE_CONV``).

    Reference: TFLite's interpreter on the file itself, so densified weights are checked against TFLite's own
    sparse kernels; only when the file needs a custom op that was replaced by a builtin (which the interpreter
    cannot run without MediaPipe) does it run the rewritten model instead.
    """
    tf = tf_import.tensorflow()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the TFLite model: {one_line(e)}") from e
    try:
        prepared = tflite_rewrite.prepare(data)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{path}: {e}") from None
    except Exception as e:  # a flatbuffer the schema cannot unpack
        raise ModelLoadError(f"{path}: cannot load the TFLite model: {one_line(e)}") from e
    interpreter_of_rewrite = False
    try:
        interpreter = _interpreter(tf, data)
    except Exception as e:  # corrupt flatbuffers, unresolved custom ops
        message = one_line(e)
        custom = _custom_ops(message)
        if custom and prepared.replaced:
            try:
                interpreter = _interpreter(tf, prepared.data)
                interpreter_of_rewrite = True
            except Exception as again:
                message = one_line(again)
                custom = _custom_ops(message)
                _load_error(path, message, custom, again)
        else:
            _load_error(path, message, custom, e)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    input_names = _unique([_clean(d["name"]) for d in inputs])
    nchw_inputs = [n for n, d in zip(input_names, inputs, strict=True) if nchw and len(d["shape"]) == 4]
    as_nchw = [d["name"] for d in inputs if _clean(d["name"]) in nchw_inputs] or None
    with tempfile.TemporaryDirectory(prefix="onnxopt-tflite-") as folder:
        readable = path
        if prepared.changed:  # tf2onnx reads a file
            readable = Path(folder) / path.name
            readable.write_bytes(prepared.data)
        proto = _tf2onnx(lambda t: t.convert.from_tflite(str(readable), opset=opset, inputs_as_nchw=as_nchw))
    _rename(proto, input_names, _unique([_clean(d["name"]) for d in outputs]))
    integer = _has_quantized_tensors(interpreter)

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, d in zip(input_names, inputs, strict=True):
            interpreter.set_tensor(d["index"], _to_nhwc(feeds[name], name in nchw_inputs).astype(d["dtype"]))
        interpreter.invoke()
        return [np.array(interpreter.get_tensor(d["index"])) for d in outputs]

    notes = []
    if prepared.densified:
        notes.append(f"densified {len(prepared.densified)} sparse weight tensor(s) for tf2onnx")
    for op in prepared.replaced:
        reference_of = "the rewritten model" if interpreter_of_rewrite else "the original model"
        notes.append(f"custom op {op} rewritten as TFLite's builtin equivalent (reference: {reference_of})")
    if integer:
        # one quantization step of each output: 1 for an integer output (compared as integers); for a float
        # output of a quantized graph, the step of the int8 tensor of its shape it is dequantized from
        tolerance = [1.0 if np.dtype(d["dtype"]).kind in "iu" else _dequantized_step(interpreter, d) for d in outputs]
        return Converted(proto, reference, "tflite-int8", tolerance, relative=False, per_sample=True, notes=notes)
    return Converted(
        proto, reference, "tflite-float", [1e-5] * len(outputs), relative=True, per_sample=True, notes=notes
    )


def _interpreter(tf, data: bytes):
    """TFLite's interpreter on ``data`` with the builtin kernels alone: the XNNPACK delegate would make the
    reference differ from TFLite's own kernels (and announce itself on stderr)."""
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = tf.lite.Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def _custom_ops(message: str) -> list[str]:
    """The custom op names in an interpreter error ("Encountered unresolved custom op: Name."), without the
    sentence's full stop."""
    names = re.findall(r"custom op:? '?([\w.\-]+)", message, flags=re.IGNORECASE)
    return [n.rstrip(".") for n in names if n.rstrip(".")]


def _load_error(path: Path, message: str, custom: list[str], error: BaseException) -> NoReturn:
    """One line: the custom op(s) the interpreter cannot resolve, or why TFLite cannot load the model."""
    if custom:
        ops = ", ".join(sorted(set(custom)))
        raise UnsupportedModelError(f"{path}: TFLite custom op(s) {ops} cannot be converted") from None
    raise ModelLoadError(f"{path}: cannot load the TFLite model: {message}") from error


# ---------------------------------------------------------------------- helpers


def _tf2onnx(run: Callable) -> onnx.ModelProto:
    t = tf_import.tf2onnx()
    try:
        proto, _ = run(t)
    except Exception as e:  # tf2onnx raises plain ValueError/KeyError/RuntimeError for unsupported graphs
        message = one_line(e)
        ops = re.findall(r"[Oo]p(?:erator)?s? \[?'?([A-Z][\w]+)", message)
        detail = f" (unsupported: {', '.join(sorted(set(ops)))})" if ops else ""
        raise ConversionError(f"tf2onnx cannot convert the model{detail}: {message}") from e
    known = ("", "ai.onnx", "com.microsoft")
    unsupported = sorted({f"{n.domain}:{n.op_type}" for n in proto.graph.node if n.domain not in known})
    if unsupported:
        raise UnsupportedModelError(f"the converted graph has ops onnxruntime does not run: {', '.join(unsupported)}")
    return proto


def _rename(proto: onnx.ModelProto, inputs: Sequence[str] | None, outputs: Sequence[str] | None) -> None:
    """Give graph inputs/outputs the source's names (in order), everywhere they are used, and call tf2onnx's
    anonymous batch dimension (``unk__12``) ``batch``."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = "batch"
    mapping: dict[str, str] = {}
    for values, names in ((proto.graph.input, inputs), (proto.graph.output, outputs)):
        if names is None or len(names) != len(values):
            continue
        for value, name in zip(values, names, strict=True):
            if value.name != name:
                mapping[value.name] = name
    taken = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    mapping = {old: new for old, new in mapping.items() if new not in taken or new == old}
    if not mapping:
        return
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        value.name = mapping.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def _nchw_names(specs, nchw: bool) -> list[str]:
    return [s.name for s in specs if nchw and len(s.shape) == 4 and s.dtype.is_floating] if nchw else []


def _to_nhwc(x: np.ndarray, was_nchw: bool) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1)) if was_nchw else x


def _has_quantized_tensors(interpreter) -> bool:
    return any(np.dtype(d["dtype"]) in (np.int8, np.uint8) for d in interpreter.get_tensor_details())


def _dequantized_step(interpreter, output: dict) -> float:
    """The step of the int8 tensors shaped like ``output`` (the one dequantized into it); any int8 tensor's
    largest step when none is."""
    quantized = [
        d
        for d in interpreter.get_tensor_details()
        if np.dtype(d["dtype"]) in (np.int8, np.uint8) and d.get("quantization") and d["quantization"][0] > 0
    ]
    same = [d for d in quantized if list(d["shape"]) == list(output["shape"])]
    scales = [float(d["quantization"][0]) for d in (same or quantized)]
    return max(scales) if scales else 1e-5


def _clean(name: str) -> str:
    name = re.sub(r":\d+$", "", name.split("/")[-1] if "/" in name and name.endswith(":0") else name)
    return re.sub(r"[^\w.\-]", "_", name) or "tensor"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out
