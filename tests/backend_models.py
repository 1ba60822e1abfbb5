"""The onnx package's backend test models, made runnable for end-to-end tests.

``light`` models replace their weights by ``ConstantOfShape`` nodes filling a
constant: they are materialized here as seeded random initializers of the
right shape (BN variances and scales positive; conv/gemm weights He-scaled
so activations stay finite through deep nets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("light", "pytorch-converted", "pytorch-operator", "simple")


def cases() -> list[tuple[str, Path]]:
    """(id, model path) of every backend test model."""
    out = []
    for suite in SUITES:
        folder = DATA / suite
        if suite == "light":
            out += [(f"light/{p.stem}", p) for p in sorted(folder.glob("*.onnx"))]
        else:
            out += [(f"{suite}/{p.parent.name}", p) for p in sorted(folder.glob("*/model.onnx"))]
    return out


def inputs_of(path: Path) -> dict[str, np.ndarray] | None:
    """The stored test inputs of a backend model (None for light models, which store none)."""
    data_set = path.parent / "test_data_set_0"
    if not data_set.is_dir():
        return None
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feeds = {}
    for i, name in enumerate(names):
        pb = data_set / f"input_{i}.pb"
        if not pb.exists():
            return None
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(pb.read_bytes())
        except Exception:  # sequences/optionals are stored as other messages
            return None
        if tensor.data_type == 0:
            return None
        array = numpy_helper.to_array(tensor)
        feeds[name] = array.astype(str) if array.dtype == object else array
    return feeds


def materialize_light(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every ``ConstantOfShape`` weight by a random initializer of its shape."""
    rng = np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    roles: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for name, role in zip(node.input[1:5], ("scale", "bias", "mean", "var"), strict=False):
                roles[name] = role
        elif node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            roles[node.input[1]] = "weight"
            if len(node.input) > 2:
                roles[node.input[2]] = "bias"
    kept = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        array = _random(rng, shape, roles.get(node.output[0], "other"))
        model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # IR 3 would require the new initializers among the inputs
    return model


def _random(rng: np.random.Generator, shape: tuple[int, ...], role: str) -> np.ndarray:
    if role in ("var", "scale"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if role in ("bias", "mean"):
        return rng.normal(0, 0.1, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(shape[0] if shape else 1, 1)
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
