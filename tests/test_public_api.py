"""The public API stays what the README documents."""

from __future__ import annotations

from pathlib import Path

from helpers import BUNDLED

import onnxopt


def test_public_names() -> None:
    expected = {
        "load",
        "save",
        "optimize",
        "compare_files",
        "inspect_model",
        "Pipeline",
        "Context",
        "PassRecord",
        "parse_spec",
        "load_recipe",
        "build_passes",
        "BUILTIN_RECIPES",
        "OnnxoptError",
        "__version__",
    }
    assert expected <= set(onnxopt.__all__)
    assert all(hasattr(onnxopt, name) for name in onnxopt.__all__)


def test_library_round_trip(tmp_path: Path) -> None:
    result = onnxopt.optimize(
        BUNDLED / "model.onnx", tmp_path / "o.onnx", passes="fold-bn,remove-unused", data=str(BUNDLED / "eval.npz")
    )
    assert result.comparison.reference_accuracy == result.comparison.candidate_accuracy
    again = onnxopt.compare_files(BUNDLED / "model.onnx", tmp_path / "o.onnx", data="random:4")
    assert again.samples == 4 and again.max_rel < 1e-5
    assert onnxopt.inspect_model(onnxopt.load(tmp_path / "o.onnx")).op_histogram.get("BatchNormalization") is None
