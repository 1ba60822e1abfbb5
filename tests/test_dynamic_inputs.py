"""Random inputs for a model whose dynamic dimension it needs fixed: every command that runs the model on them
says which shapes they had and how to set them (``--input-shape``), and runs when they are set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import one_line_error, parse

from onnxopt.cli import main
from onnxopt.data import RandomDataset
from onnxopt.errors import ModelRunError
from onnxopt.runtime import TensorSpec

#: A text-line recognizer's head: [N,3,48,W] reshaped to [N, 3*48*320], so only W=320 runs (the rule guesses 48).
WIDTH = 320
HINT = "--input-shape x:1x3x48xW"


@pytest.fixture
def recognizer(tmp_path: Path) -> Path:
    model = parse(
        """
        <ir_version: 8, opset_import: ["": 17]>
        g (float[N, 3, 48, W] x) => (float[N, 4] y) {
            r = Reshape(x, shape)
            y = MatMul(r, k)
        }
        """,
        shape=np.array([-1, 3 * 48 * WIDTH], np.int64),
        k=np.ones((3 * 48 * WIDTH, 4), np.float32),
    )
    path = tmp_path / "rec.onnx"
    onnx.save(model, str(path))
    return path


BENCH = ["--runs", "2", "--warmup", "0", "--no-memory"]


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_guessed_width_is_one_line_with_the_input_shape_hint(command: str, recognizer: Path, capsys) -> None:
    extra = BENCH if command == "bench" else []
    line = one_line_error([command, str(recognizer), str(recognizer), *extra], capsys)
    assert "random inputs x float32[" in line and ",3,48,48] (dynamic dims filled: W=48)" in line
    assert "Input shape:{" in line and "requested shape:{-1,46080}" in line  # onnxruntime's own reason, kept
    assert f"give {HINT} with the sizes the model needs, or --data" in line
    assert "reshape_helper.h" not in line


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_given_width_runs(command: str, recognizer: Path, tmp_path: Path, capsys) -> None:
    extra = [*BENCH, "--report", str(tmp_path / "bench.md")] if command == "bench" else []
    shape = ["--input-shape", f"x:1x3x48x{WIDTH}"]
    assert main([command, str(recognizer), str(recognizer), *shape, *extra]) == 0
    out = capsys.readouterr().out
    if command == "bench":
        line = f"random inputs: x float32[1,3,48,{WIDTH}] (from --input-shape)"
        assert line in out.splitlines() and line in (tmp_path / "bench.md").read_text()


def test_bench_and_inspect_say_the_shapes_they_used(recognizer: Path, capsys) -> None:
    assert main(["bench", str(recognizer), "--data", "random", *BENCH]) != 0  # --data random: the same hint
    assert HINT in capsys.readouterr().err
    assert main(["inspect", str(recognizer)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  random inputs (MAC count): x float32[1,3,48,48] (dynamic dims filled: W=48; set {HINT})" in lines
    assert main(["inspect", str(recognizer), "--input-shape", f"x:1x3x48x{WIDTH}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["random_inputs"] == f"x float32[1,3,48,{WIDTH}] (from --input-shape)"
    assert summary["macs"] == 3 * 48 * WIDTH * 4


def test_inspect_says_why_macs_it_had_to_measure_are_missing(tmp_path: Path, capsys) -> None:
    """A Reshape target computed from W: shape inference cannot follow it, and the run that measures the
    shapes fails at the guessed W; the MAC line says so, with the hint, instead of counting 0 in silence."""
    model = parse(
        """
        <ir_version: 8, opset_import: ["": 17]>
        g (float[N, 3, 48, W] x) => (float[N, T, 4] y) {
            s = Shape(x)
            n = Slice(s, zero, one)
            w = Slice(s, three, four)
            t = Div(w, forty)
            shape = Concat<axis=0>(n, t, minus)
            r = Reshape(x, shape)
            y = MatMul(r, k)
        }
        """,
        zero=np.array([0]), one=np.array([1]), three=np.array([3]), four=np.array([4]), forty=np.array([40]),
        minus=np.array([-1]), k=np.ones((3 * 48 * 40, 4), np.float32),
    )  # fmt: skip
    path = tmp_path / "computed.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs_unknown"] and "MatMul" in summary["macs_note"] and HINT in summary["macs_note"]
    assert main(["inspect", str(path), "--input-shape", f"x:1x3x48x{WIDTH}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs_unknown"] == [] and summary["macs_note"] is None
    assert summary["macs"] == (WIDTH // 40) * 3 * 48 * 40 * 4


def test_shapes_line_names_filled_dims_and_the_template() -> None:
    inputs = [
        TensorSpec("x", np.dtype(np.float32), ("N", 3, "H", "W")),
        TensorSpec("mask", np.dtype(np.bool_), ("N", "W", None)),
        TensorSpec("scale", np.dtype(np.float32), ()),
    ]
    data = RandomDataset(inputs, 2, seed=0)
    assert data.shapes_line(2) == (
        "x float32[2,3,224,224], mask bool[2,224,1], scale float32 scalar (dynamic dims filled: H=224, W=224, "
        "mask[2]=1; set --input-shape x:1x3xHxW,mask:1xWx?)"
    )
    given = RandomDataset(inputs, 2, seed=0, shapes={"x": (1, 3, 32, 64)})
    assert given.shapes_line() == (
        "x float32[1,3,32,64], mask bool[1,64,1], scale float32 scalar (dynamic dims filled: W=64, mask[2]=1; "
        "set --input-shape mask:1xWx?)"
    )
    fixed = RandomDataset([TensorSpec("x", np.dtype(np.float32), (1, 3))], 1, seed=0)
    assert fixed.shapes_line() == "x float32[1,3]"
    failure = fixed.run_failure(RuntimeError("bad\nvalues"))
    assert isinstance(failure, ModelRunError)
    assert str(failure) == (
        "onnxruntime cannot run the model on random inputs x float32[1,3]: bad values; give --data with real "
        "inputs, or --input-shape with the sizes the model needs"
    )
