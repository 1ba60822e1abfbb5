"""The evaluation reuses the outputs the pipeline's guard computed on the same feeds, and gets the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import BUNDLED

from onnxopt.api import optimize
from onnxopt.data import open_dataset
from onnxopt.evaluate.compare import KnownOutputs, compare, feeds_key
from onnxopt.runtime import Runner


class _MustNotRun:
    """A runner whose outputs are all known: running it is a bug."""

    def __init__(self, runner: Runner) -> None:
        self.inputs, self.outputs, self.output_names = runner.inputs, runner.outputs, runner.output_names

    def run(self, feeds, outputs=None):
        raise AssertionError("ran a batch whose outputs were known")


def test_feeds_key_tells_feeds_apart() -> None:
    x = np.zeros((1, 3), np.float32)
    assert feeds_key({"x": x}) == feeds_key({"x": x.copy()})
    assert feeds_key({"x": x}) != feeds_key({"x": x + 1})
    assert feeds_key({"x": x}) != feeds_key({"y": x})
    assert feeds_key({"x": x}) != feeds_key({"x": x.astype(np.float64)})
    assert feeds_key({"x": x}) != feeds_key({"x": x.reshape(3, 1)})


def test_compare_uses_known_outputs_instead_of_running() -> None:
    reference = Runner(BUNDLED / "model.onnx")
    dataset = open_dataset(str(BUNDLED / "eval.npz"), reference.inputs)
    feeds = [b.feeds for b in dataset.batches(8, 32)]
    outputs = [reference.run(f) for f in feeds]
    candidate = [[o + 0.01 for o in out] for out in outputs]
    known = KnownOutputs.of(reference.output_names, feeds, outputs, candidate)
    fresh = open_dataset(str(BUNDLED / "eval.npz"), reference.inputs)
    got = compare(_MustNotRun(reference), _MustNotRun(reference), fresh, batch_size=8, limit=32, known=known)
    assert got.samples == 32 and got.outputs[0].max_abs > 0.009
    assert got.reference_accuracy is not None  # labels still counted from the dataset


def test_optimize_reports_what_a_fresh_comparison_measures(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = optimize(BUNDLED / "model.onnx", out, recipe="lossless", data=str(BUNDLED / "eval.npz"))
    reference = Runner(BUNDLED / "model.onnx")
    fresh = compare(reference, Runner(out), open_dataset(str(BUNDLED / "eval.npz"), reference.inputs))
    assert result.comparison.samples == fresh.samples > 64  # past the guard's samples too
    assert result.comparison.outputs == fresh.outputs
    assert result.comparison.candidate_accuracy == fresh.candidate_accuracy
