"""distill: a Keras student trained on an ONNX teacher's soft targets; and the seed's example end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import BUNDLED

pytest.importorskip("tensorflow", reason="the tf extra is not installed")
pytest.importorskip("tf2onnx", reason="the tf extra is not installed")

from onnxopt.api import optimize
from onnxopt.cli import main
from onnxopt.convert import tf_import
from onnxopt.distill import DistillConfig, distill

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import seed_example

TRAIN, EVAL = BUNDLED / "train.npz", BUNDLED / "eval.npz"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    with np.load(TRAIN) as data:
        np.savez(folder / "train.npz", image=data["image"][:1000], labels=data["labels"][:1000])
        np.savez(folder / "unlabelled.npz", image=data["image"][:300])
    return folder


def _student_file(folder: Path, width: float) -> Path:
    path = folder / f"student_{width}.keras"
    if not path.exists():
        seed_example.seed_cnn(width).save(str(path))
    return path


def test_distilled_half_width_student_from_the_bundled_teacher(small_data, tmp_path) -> None:
    student = _student_file(small_data, 0.5)
    lines: list[str] = []
    config = DistillConfig(epochs=3, seed=0)
    result = distill(
        BUNDLED / "model.onnx",
        str(student),
        str(small_data / "train.npz"),
        tmp_path / "student.onnx",
        config,
        eval_data=str(EVAL),
        on_epoch=lines.append,
    )
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3")
    assert result.metric == "accuracy" and result.teacher_score == pytest.approx(0.95)
    assert result.student_parameters < 0.3 * result.teacher_parameters
    assert result.student_score > 0.85 and result.agreement > 0.85  # 3 epochs on 1,000 samples
    onnx.checker.check_model(onnx.load(str(tmp_path / "student.onnx")), full_check=True)
    # the distilled student goes on through the int8 recipe (minus its timing decision, see test_quantize)
    quantized = optimize(
        tmp_path / "student.onnx",
        tmp_path / "student_int8.onnx",
        passes="lossless,equalize,quantize:bias_correct=true",
        data=str(EVAL),
    )
    cmp = quantized.comparison
    assert quantized.pipeline.records[-1].status == "applied"
    assert cmp.reference_accuracy - cmp.candidate_accuracy <= 0.01


def test_the_same_seed_gives_the_same_student(small_data, tmp_path) -> None:
    student = _student_file(small_data, 0.25)
    config = DistillConfig(epochs=1, seed=3)
    outputs = []
    for name in ("a", "b"):
        distill(BUNDLED / "model.onnx", str(student), str(small_data / "train.npz"), tmp_path / f"{name}.onnx", config)
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"image": np.load(EVAL)["image"][:64]})[0])
    assert np.array_equal(outputs[0], outputs[1])


def test_width_copies_a_keras_teacher_and_unlabelled_data_uses_the_teacher_alone(small_data, tmp_path) -> None:
    teacher = small_data / "teacher.keras"
    model = seed_example.train(seed_example.seed_cnn(0.5), epochs=1, limit=500)
    model.save(str(teacher))
    result = distill(
        teacher,
        "width=0.5",
        str(small_data / "unlabelled.npz"),
        tmp_path / "s.onnx",
        DistillConfig(epochs=1, holdout=0.3),
        keras_output=tmp_path / "s.keras",
    )
    keras = tf_import.keras()
    student = keras.models.load_model(str(tmp_path / "s.keras"), compile=False)
    widths = [layer.get_config().get("filters") or layer.get_config().get("units") for layer in student.layers]
    assert [w for w in widths if w] == [8, 16, 32, 10]  # half of the teacher's 16, 32, 64; the output kept
    assert result.metric == "top-1 agreement with the teacher" and result.teacher_score is None
    assert result.holdout_samples == 90 and result.train_samples == 210


def test_an_onnx_teacher_distills_into_its_own_pruned_width(small_data, tmp_path, capsys) -> None:
    """``--student width=0.5`` with an ONNX teacher: half of each prunable group's channels removed, then
    fine-tuned on the teacher's outputs; the CLI prints each epoch and the held-out comparison."""
    out = tmp_path / "half.onnx"
    args = ["distill", "--teacher", str(BUNDLED / "model.onnx"), "--student", "width=0.5", "--data",
            str(small_data / "train.npz"), "--eval-data", str(EVAL), "--epochs", "2", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and "accuracy" in printed
    student, teacher = onnx.load(str(out)), onnx.load(str(BUNDLED / "model.onnx"))
    onnx.checker.check_model(student, full_check=True)
    conv = [t for t in student.graph.initializer if len(t.dims) == 4]
    assert conv and all(t.dims[0] % 8 == 0 for t in conv)
    params = sum(int(np.prod(t.dims)) for t in student.graph.initializer)
    assert params < 0.6 * sum(int(np.prod(t.dims)) for t in teacher.graph.initializer)
    with np.load(EVAL) as data:
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        accuracy = (session.run(None, {"image": data["image"]})[0].argmax(1) == data["labels"]).mean()
    assert accuracy > 0.85  # 2 epochs on 1,000 samples at half width


def test_bad_distillation_requests(small_data, tmp_path, capsys) -> None:
    base = ["distill", "--data", str(small_data / "train.npz"), "-o", str(tmp_path / "x.onnx")]
    cases = [
        (["--teacher", str(BUNDLED / "model.onnx"), "--student", "width=1.5"], "can only be narrowed"),
        (["--teacher", str(BUNDLED / "model.onnx"), "--student", "width=abc"], "must be a number"),
        (["--teacher", str(BUNDLED / "model.onnx"), "--student", str(tmp_path / "none.keras")], "cannot load"),
        (["--teacher", str(BUNDLED / "model.onnx"), "--student", "width=0.5", "--alpha", "2"], "--alpha"),
    ]
    for args, expected in cases:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "x.onnx").exists()


def test_the_seed_example_end_to_end(tmp_path) -> None:
    steps = seed_example.run(tmp_path / "seed", epochs=1, limit=1000, bench_seconds=0.2)
    assert steps["conversion"].max_abs <= steps["conversion"].checks[0].allowed
    result = steps["optimize"]
    names = [r.name for r in result.pipeline.records]
    assert "clip-weights" in names and names[-1] == "quantize"
    assert result.pipeline.records[-1].status == "applied"
    cmp = result.comparison
    assert cmp.reference_accuracy - cmp.candidate_accuracy <= 0.02
    assert result.output_file_bytes < 0.35 * result.input_file_bytes
    held = steps["held_out"]  # the 744 samples neither training nor calibration saw
    assert held.samples == 744 and held.reference_accuracy - held.candidate_accuracy <= 0.02
    text = steps["report"].read_text()
    assert "quantize" in text and "latency" in text.lower()
