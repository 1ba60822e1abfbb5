"""Shared test utilities: build models from ONNX text, run them, apply passes."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from onnxopt import io
from onnxopt.passes.base import OptPass, PassOutcome
from onnxopt.shapes import annotate_shapes

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "digits_cnn"


def parse(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text syntax plus named initializers; checked."""
    model = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def yolox_head(
    g: np.random.Generator, *, batch: int | None, objectness_bias: float, declared: str | None = None
) -> onnx.ModelProto:
    """A YOLOX-like detector head on 3x10x10 inputs: 100 anchors of ``x, y, w, h, obj, cls`` (the scores
    through a Sigmoid); ``batch`` fixed (the Reshape's shape constant holds it, as an export for one sample
    does) or None (dynamic). ``declared``: the input's batch dimension as declared, if not ``batch`` (a graph
    that declares ``N`` but reshapes to one sample). Its weights are the next draws of ``g``."""
    n = "N" if batch is None else str(batch)
    text = f"""<ir_version: 8, opset_import: ["": 17]>
    g (float[{declared or n}, 3, 10, 10] x) => (float[{n}, 100, 6] output) {{
        c = Conv<pads=[1, 1, 1, 1]>(x, w, b)
        r = Reshape(c, shape)
        t = Transpose<perm=[0, 2, 1]>(r)
        box, score = Split<axis=2>(t, sizes)
        s = Sigmoid(score)
        output = Concat<axis=2>(box, s)
    }}"""
    weights = {"w": g.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32),
               "b": np.array([0, 0, 0, 0, objectness_bias, 0], np.float32)}  # fmt: skip
    shape = np.array([batch or 0, 6, -1], np.int64)
    return parse(text, **weights, shape=shape, sizes=np.array([4, 2], np.int64))


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` in onnxruntime with graph optimizations disabled."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def apply(model: onnx.ModelProto, opt_pass: OptPass) -> tuple[onnx.ModelProto, PassOutcome]:
    """Run one pass on a copy of ``model``; return the checked result and the pass outcome."""
    ir_model = io.from_proto(model)
    annotate_shapes(ir_model)  # as the pipeline does before its passes
    outcome = opt_pass(ir_model)
    result = io.to_proto(ir_model)
    onnx.checker.check_model(result, full_check=True)
    return result, outcome


def fused_ops(model: onnx.ModelProto | Path, folder: Path) -> collections.Counter:
    """The op histogram of onnxruntime's own optimized graph (what actually runs), written under ``folder``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "ort_optimized.onnx")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(folder / "ort_optimized.onnx")).graph.node)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_same_outputs(
    a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5
) -> None:
    """Outputs agree within ``rtol`` of each output's magnitude (and are not trivially zero)."""
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        assert x.shape == y.shape
        scale = max(float(np.abs(x).max()), 1e-12)
        err = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
        assert err <= rtol * scale, f"max error {err:g} > {rtol:g} x {scale:g}"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(args: list[str], capsys) -> str:  # type: ignore[no-untyped-def]
    """Run the CLI on ``args``: it must exit 2 with exactly one ``onnxopt: error:`` line and no traceback."""
    from onnxopt.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("onnxopt: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err)
    return lines[0]
