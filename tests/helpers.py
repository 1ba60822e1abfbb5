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
