"""Distillation of intermediate tensors: the ones a pruned student computes at the teacher's width are found by
comparing the graphs, and training on them brings them closer to the teacher's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import parse, run

from onnxopt.distill.features import kept_width_features, with_outputs

RESIDUAL = """<ir_version: 8, opset_import: ["": 17]>
g (float[N, 3, 8, 8] x) => (float[N, 8] y) {
    c0 = Conv<pads=[1,1,1,1]>(x, w0)
    r0 = Relu(c0)
    c1 = Conv<pads=[1,1,1,1]>(r0, w1)
    r1 = Relu(c1)
    c2 = Conv<pads=[1,1,1,1]>(r1, w2)
    s = Add(r0, c2)
    p = GlobalAveragePool(s)
    y = Flatten(p)
}"""


def _pair(inner: int = 8) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(teacher, student): the student's inner convolution keeps ``inner`` of its 16 channels (the first ones,
    as pruning by slicing would), the residual stream keeps its 8."""
    g = np.random.default_rng(0)
    w0, w1, w2 = (g.normal(0, 0.4, s).astype(np.float32) for s in ((8, 3, 3, 3), (16, 8, 3, 3), (8, 16, 3, 3)))
    teacher = parse(RESIDUAL, w0=w0, w1=w1, w2=w2)
    student = parse(RESIDUAL, w0=w0, w1=w1[:inner], w2=w2[:, :inner])
    return teacher, student


def test_the_tensors_that_kept_their_width_downstream_of_the_change_are_matched() -> None:
    teacher, student = _pair()
    # r0 kept its width but nothing upstream of it changed; c1 and r1 lost channels; y is an output
    assert kept_width_features(student, teacher) == ["c2", "s", "p"]
    assert kept_width_features(student, teacher, limit=2) == ["c2", "p"]  # spread out, the last one always
    assert kept_width_features(teacher, teacher) == []  # nothing changed: nothing to teach


def test_with_outputs_adds_the_tensors_after_the_outputs() -> None:
    teacher, _ = _pair()
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    y, s = run(with_outputs(teacher, ["s"]), {"x": x})
    assert s.shape == (2, 8, 8, 8) and np.allclose(y, run(teacher, {"x": x})[0])
    assert with_outputs(teacher, []) is teacher


def test_matching_a_feature_brings_the_student_s_tensor_toward_the_teacher_s() -> None:
    pytest.importorskip("tensorflow", reason="the tf extra is not installed")
    from onnxopt.distill.finetune import FinetuneConfig, finetune

    teacher, student = _pair(inner=4)
    inputs = {"x": np.random.default_rng(2).normal(0, 1, (96, 3, 8, 8)).astype(np.float32)}
    held = {"x": inputs["x"][:24]}

    def stream_error(model: onnx.ModelProto) -> float:
        (want,) = run(with_outputs(teacher, ["s"]), held)[1:]
        (got,) = run(with_outputs(model, ["s"]), held)[1:]
        return float(np.mean((got - want) ** 2) / np.mean(want**2))

    results = {}
    for weight in (0.0, 10.0):
        config = FinetuneConfig(epochs=6, batch=16, learning_rate=0.01, seed=3, features=("s",), feature_weight=weight)
        results[weight] = finetune(student, teacher, inputs, config).model
    before = stream_error(student)
    assert stream_error(results[10.0]) < before
    assert stream_error(results[10.0]) < stream_error(results[0.0])  # the outputs alone teach the stream less


def test_the_distill_pass_matches_the_features_pruning_kept_when_asked(tmp_path) -> None:
    pytest.importorskip("tensorflow", reason="the tf extra is not installed")
    from onnxopt.api import optimize

    teacher, _ = _pair()
    path, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(teacher, str(path))
    np.savez(data, x=np.random.default_rng(3).normal(0, 1, (64, 3, 8, 8)).astype(np.float32))
    notes = {}
    for weight in (0, 1):
        spec = f"prune-channels:ratio=0.5,distill:epochs=1;batch=16;feature_weight={weight}"
        result = optimize(path, tmp_path / f"o{weight}.onnx", passes=spec, data=str(data), seed=1)
        record = next(r for r in result.pipeline.records if r.name == "distill")
        assert record.status == "applied", record.skipped
        notes[weight] = " ".join(record.notes)
    assert "intermediate tensor" not in notes[0]
    assert "matching" in notes[1] and "intermediate tensor(s) that kept their width (last: p)" in notes[1]
