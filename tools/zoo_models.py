"""The onnx package's ``light`` model-zoo graphs made runnable, with sane activations.

``light`` models store every weight as a ``ConstantOfShape``. They are
materialized with seeded He-scaled random weights (``tests/backend_models.py``),
converted to opset 13, and then their normalization is re-estimated on data
so activations stay in a realistic range through the whole network:

* every BatchNormalization gets the batch mean and variance of its input;
* every Conv/Gemm whose output does not feed a BatchNormalization is scaled so
  its output has unit mean square (LSUV, Mishkin & Matas 2016).

Both are done in ONE onnxruntime run: the graph is rewritten so each BN
normalizes with the statistics of its current batch (computed with
ReduceMean) and each un-normalized Conv/Gemm output is divided by its RMS,
the statistics are exposed as outputs, and then folded back into the BN
initializers and the Conv/Gemm weights. Dividing an output by its RMS in the
graph is exactly what scaling that layer's weight and bias does, so later
layers saw precisely the activations the final model produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from backend_models import DATA, materialize_light

LIGHT = DATA / "light"
DEFAULT_MODELS = ("resnet50", "squeezenet", "shufflenet", "inception_v1")
#: Every light model (vgg19, zfnet512 and alexnet materialize to 240-550 MB each).
ALL_LIGHT = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))


def light_model(name: str, data: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    """``light_<name>`` materialized, at opset 13, with normalization re-estimated on ``data``."""
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        known = ", ".join(sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx")))
        raise SystemExit(f"no light model '{name}' (known: {known})")
    model = materialize_light(onnx.load(str(path)), seed=seed)
    _tidy(model)
    model = onnx.version_converter.convert_version(model, 13)
    return reestimate_normalization(model, data)


def _tidy(model: onnx.ModelProto) -> None:
    """What every tool would do first, so no variant wins by it alone: weights are not graph inputs
    (IR 3 listed them, which keeps onnxruntime from folding them) and unused tensors are dropped."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    return tuple(d.dim_value or 1 for d in first.type.tensor_type.shape.dim)


def reestimate_normalization(model: onnx.ModelProto, data: np.ndarray) -> onnx.ModelProto:
    """Set BN statistics and LSUV scales from one run on ``data`` (see the module docstring)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes, outputs = [], []
    renamed: dict[str, str] = {}
    for node in graph.node:
        node = _copy(node, renamed)
        if node.op_type == "BatchNormalization":
            x = node.input[0]
            mean, var = f"{x}__mean", f"{x}__var"
            nodes += _batch_stats(x, mean, var)
            node.input[3], node.input[4] = mean, var
            outputs += [mean, var]
            nodes.append(node)
            continue
        nodes.append(node)
        feeds_bn = any(c.op_type == "BatchNormalization" for c in consumers.get(node.output[0], []))
        if node.op_type in ("Conv", "Gemm") and not feeds_bn:
            y = node.output[0]
            rms, scaled = f"{y}__rms", f"{y}__lsuv"
            nodes += [
                helper.make_node("Mul", [y, y], [f"{y}__sq"]),
                helper.make_node("ReduceMean", [f"{y}__sq"], [f"{y}__ms"], keepdims=0),
                helper.make_node("Sqrt", [f"{y}__ms"], [rms]),
                helper.make_node("Div", [y, rms], [scaled]),
            ]
            renamed[y] = scaled
            outputs.append(rms)
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    for out in probe.graph.output:
        out.name = renamed.get(out.name, out.name)
    probe.graph.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # the probe leaves the BN statistics initializers unused: expected
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    values = dict(zip(outputs, session.run(outputs, {input_name: data}), strict=True))
    return _apply(model, values)


def _batch_stats(x: str, mean: str, var: str) -> list[onnx.NodeProto]:
    axes = [0, 2, 3]
    return [
        helper.make_node("ReduceMean", [x], [mean + "_k"], axes=axes, keepdims=1),
        helper.make_node("Sub", [x, mean + "_k"], [x + "__centered"]),
        helper.make_node("Mul", [x + "__centered", x + "__centered"], [x + "__sq"]),
        helper.make_node("ReduceMean", [x + "__sq"], [var], axes=axes, keepdims=0),
        helper.make_node("ReduceMean", [x], [mean], axes=axes, keepdims=0),
    ]


def _copy(node: onnx.NodeProto, renamed: dict[str, str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        copy.input[i] = renamed.get(name, name)
    return copy


def _apply(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    inits = {i.name: i for i in model.graph.initializer}

    def scale(name: str, factor: float) -> None:
        array = numpy_helper.to_array(inits[name]) / np.float32(factor)
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            x = node.input[0]
            for slot, key in ((3, f"{x}__mean"), (4, f"{x}__var")):
                inits[node.input[slot]].CopyFrom(
                    numpy_helper.from_array(values[key].astype(np.float32), node.input[slot])
                )
        elif f"{node.output[0]}__rms" in values:
            rms = float(values[f"{node.output[0]}__rms"])
            for name in node.input[1:3]:
                if name in inits:
                    scale(name, max(rms, 1e-12))
    return model
