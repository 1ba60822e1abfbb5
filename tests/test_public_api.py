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


def test_optimize_takes_a_model_object_and_arrays_and_returns_the_model(tmp_path) -> None:
    """``onnxopt.optimize(proto, recipe=..., data={...})``: nothing written, the model on the result."""
    import numpy as np
    import onnx
    import onnx_ir as ir

    proto = onnx.load(str(BUNDLED / "model.onnx"))
    with np.load(BUNDLED / "eval.npz") as data:
        arrays = {"image": data["image"][:96], "labels": data["labels"][:96]}
    before = set(Path(tmp_path).iterdir())
    result = onnxopt.optimize(proto, passes="lossless,quantize:weights_only=true", data=arrays)
    assert isinstance(result.model, onnx.ModelProto) and result.output_path is None
    assert result.comparison.samples == 96 and result.comparison.reference_accuracy is not None
    assert result.to_dict()["kind"] == "optimize" and "memory" in repr(result)
    assert set(Path(tmp_path).iterdir()) == before
    # an onnx_ir model and an iterable of feeds work the same; held-out arrays score the result
    feeds = ({"image": arrays["image"][i : i + 32]} for i in range(0, 96, 32))
    again = onnxopt.optimize(ir.from_proto(proto), recipe="lossless", data=feeds, eval_data=arrays)
    assert again.held_out and again.comparison.samples == 96 and "recipe lossless" in repr(again)
    out = tmp_path / "o.onnx"
    onnxopt.optimize(proto, out, recipe="lossless")
    assert out.exists() and onnxopt.compare(BUNDLED / "model.onnx", out).max_rel < 1e-4
    timing = onnxopt.bench([BUNDLED / "model.onnx", out], onnxopt.api.BenchConfig(seconds=0.05, memory=False))
    assert len(timing.measurements) == 2
