"""Budgets read outputs as users do (onnxopt/evaluate/readings.py): whole CTC sequences, confident anchors, top-1."""

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main
from onnxopt.data import open_dataset
from onnxopt.errors import DataError
from onnxopt.evaluate.readings import ReadingCounter, anchor_detections, ctc_paths, pooled_agreement, read_outputs
from onnxopt.optimizer.quality import QualityProbe
from onnxopt.runtime import Runner


def _steps(path: list[int], classes: int = 5) -> np.ndarray:
    """Scores ``T×C`` whose arg-max per step is ``path``."""
    scores = np.zeros((len(path), classes), dtype=np.float32)
    scores[np.arange(len(path)), path] = 1.0
    return scores


def test_ctc_paths_collapse_repeats_before_dropping_the_blank_in_either_layout() -> None:
    a = _steps([1, 1, 0, 1, 2, 2, 0, 0, 3])  # a a - a b b - - c: the blank separates the two a's
    b = _steps([1, 1, 1, 2, 0, 3, 3, 3, 3])  # a a a b - c c c c
    batch_first = np.stack([a, b])  # N×T×C
    assert ctc_paths(batch_first, batch_axis=0) == [(1, 1, 2, 3), (1, 2, 3)]
    assert ctc_paths(np.swapaxes(batch_first, 0, 1), batch_axis=1) == [(1, 1, 2, 3), (1, 2, 3)]


def test_a_sequence_agrees_only_when_all_of_it_does() -> None:
    reference = np.stack([_steps([1, 0, 2, 0, 3, 0]), _steps([4, 0, 4, 0, 1, 0])])
    candidate = reference.copy()
    candidate[0, 1] = _steps([3])[0]  # one step of six: the first sample now reads 1 3 2 3 -- wrong
    candidate[1, 0] = _steps([0])[0]  # a blank for the first 4: reads 4 1 -- wrong too
    reading = read_outputs(["logits"], [reference], batch=2)
    assert reading.metric == "sequence agreement" and reading.outputs[0].batch_axis == 0
    counter = ReadingCounter(reading)
    counter.add([reference], [candidate])
    per_step = float(np.mean(reference.argmax(-1) == candidate.argmax(-1)))
    assert per_step == pytest.approx(10 / 12) and counter.value() == 0.0
    same = ReadingCounter(reading)
    same.add([reference], [reference + 0.01])
    assert same.value() == 1.0


def _yolox_head(anchors: int, hits: dict[int, tuple[float, float]]) -> np.ndarray:
    """``[1, A, 6]``: raw box offsets, then objectness and one class probability (``x, y, w, h, obj, cls``)."""
    rng = np.random.default_rng(0)
    head = np.concatenate(
        [rng.normal(0, 3, (1, anchors, 4)), np.full((1, anchors, 1), 0.01), np.full((1, anchors, 1), 0.9)], axis=2
    ).astype(np.float32)
    for anchor, (obj, cls) in hits.items():
        head[0, anchor, 4:] = obj, cls
    return head


def test_detection_reads_objectness_times_class_and_scores_the_f1_of_confident_anchors() -> None:
    reference = _yolox_head(300, {5: (0.9, 0.95), 40: (0.8, 0.9), 41: (0.5, 0.9)})
    reading = read_outputs(["output"], [reference], batch=1)
    [head] = reading.outputs
    assert reading.metric == "detection agreement"
    assert head.anchor_axis == 1 and head.score_columns == (4, 5) and head.objectness
    assert anchor_detections(reference, head) == [{(5, 0), (40, 0), (41, 0)}]  # 0.01 x 0.9 stays below 0.25
    candidate = _yolox_head(300, {5: (0.9, 0.95), 40: (0.8, 0.9), 77: (0.6, 0.9)})  # lost 41, found 77
    counter = ReadingCounter(reading)
    counter.add([reference], [candidate])
    assert counter.value() == pytest.approx(2 * 2 / (3 + 3))


def test_shapes_and_values_choose_the_reading() -> None:
    rng = np.random.default_rng(1)
    softmax = np.exp(rng.normal(size=(2, 300, 20)))
    softmax /= softmax.sum(-1, keepdims=True)
    sigmoid = 1 / (1 + np.exp(-rng.normal(size=(2, 7600, 10))))
    yolov8 = np.concatenate([rng.uniform(0, 640, (2, 4, 8400)), rng.uniform(0, 1, (2, 80, 8400))], axis=1)
    cases = {
        "classifier [N, C]": (rng.normal(size=(2, 7)), "top-1 agreement"),
        "CTC logits [T, N, C]": (rng.normal(size=(24, 2, 8210)), "sequence agreement"),
        "CTC softmax over a long sequence [N, T, C]": (softmax, "sequence agreement"),
        "class-score head [N, A, C]": (sigmoid, "detection agreement"),
        "YOLOv8 [N, 4 + C, A]": (yolov8, "detection agreement"),
        "feature map [N, C, H, W]": (rng.normal(size=(2, 8, 4, 4)), "output agreement"),
    }
    for what, (array, metric) in cases.items():
        assert read_outputs(["out"], [array.astype(np.float32)], batch=2).metric == metric, what
    head = read_outputs(["out"], [yolov8.astype(np.float32)], batch=2).outputs[0]
    assert head.anchor_axis == 2 and head.score_columns == tuple(range(4, 84)) and not head.objectness


def test_a_forced_reading_no_output_fits_is_one_clear_error() -> None:
    expected = r"--metric detection: no output reads as detection scores \(outputs: y \[4, 7\]"
    with pytest.raises(DataError, match=expected):
        read_outputs(["y"], [np.zeros((4, 7), np.float32)], batch=4, metric="detection")
    with pytest.raises(DataError, match="--metric must be one of auto, top1, sequence, detection, values"):
        read_outputs(["y"], [np.zeros((4, 7), np.float32)], batch=4, metric="f1")
    assert read_outputs(["y"], [np.zeros((4, 7), np.float32)], batch=4, metric="values").metric == "output agreement"


def _ctc_model(path: Path) -> Path:
    """A tiny convolutional CTC recognizer: ``[N, 1, 8, 16]`` lines to ``[T=16, N, 10]`` time-major logits."""
    rng = np.random.default_rng(2)
    weights = {
        "w1": rng.normal(0, 0.5, (16, 1, 3, 3)), "b1": rng.normal(0, 0.1, 16),
        "w2": rng.normal(0, 0.2, (16, 16, 3, 3)), "b2": rng.normal(0, 0.1, 16),
        "w3": rng.normal(0, 0.5, (16, 10)), "axes": np.array([2]), "perm_shape": np.array([0]),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2", "axes"], ["pooled"], keepdims=0),  # N×16×W
        helper.make_node("Transpose", ["pooled"], ["steps"], perm=[2, 0, 1]),  # W×N×16
        helper.make_node("MatMul", ["steps", "w3"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k)
        for k, v in weights.items()
        if k != "perm_shape"
    ]
    graph = helper.make_graph(
        nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [16, "N", 10])], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


def test_the_quality_probe_reads_a_recognizer_by_whole_sequences(tmp_path: Path) -> None:
    model = _ctc_model(tmp_path / "ctc.onnx")
    np.savez(tmp_path / "lines.npz", x=np.random.default_rng(3).normal(size=(32, 1, 8, 16)).astype(np.float32))
    dataset = open_dataset(str(tmp_path / "lines.npz"), Runner(str(model)).inputs)
    original = ir.load(str(model))
    probe = QualityProbe(original, dataset, limit=32)
    assert probe.metric == "sequence agreement" and probe.baseline == 1.0
    candidate = ir.load(str(model))
    bias = candidate.graph.initializers["b2"]
    bias.const_value = ir.tensor(bias.const_value.numpy() + 0.3, name="b2")  # most steps keep their class
    values = QualityProbe(original, dataset, limit=32, metric="values")
    assert values.metric == "output agreement"
    sequences, relative = probe.drop(candidate), values.drop(candidate)
    assert sequences > relative  # whole sequences break where the raw outputs barely move
    assert 0 < sequences <= 1


def test_optimize_takes_metric_and_refuses_a_reading_no_output_fits(tmp_path: Path, capsys) -> None:
    model = _ctc_model(tmp_path / "ctc.onnx")
    np.savez(tmp_path / "lines.npz", x=np.random.default_rng(3).normal(size=(32, 1, 8, 16)).astype(np.float32))
    args = ["optimize", str(model), "-o", str(tmp_path / "out.onnx"), "--data", str(tmp_path / "lines.npz")]
    budget = ["--passes", "prune-channels:ratio=0.5;max_drop=0.05"]
    code = main([*args, *budget, "--metric", "top1"])
    err = capsys.readouterr().err
    assert code == 2 and "--metric top1: no output reads as top-1 scores (outputs: logits [16, 32, 10])" in err
    assert not (tmp_path / "out.onnx").exists()
    code = main([*args, *budget, "-v"])
    out = capsys.readouterr().out
    assert code in (0, 3) and "sequence agreement" in out and "pass raised" not in out  # time-major refits


def test_per_sample_rows_add_up_to_the_pooled_agreement() -> None:
    reference = _yolox_head(300, {5: (0.9, 0.95), 40: (0.8, 0.9), 41: (0.5, 0.9)})
    candidate = _yolox_head(300, {5: (0.9, 0.95), 40: (0.8, 0.9), 77: (0.6, 0.9)})
    reading = read_outputs(["output"], [reference], batch=1)
    counter = ReadingCounter(reading)
    counter.add([reference], [candidate])
    counter.add([reference], [reference])
    rows = counter.rows()
    assert rows.tolist() == [[2, 3, 3], [3, 3, 3]]  # matched, the reference's, the candidate's: per sample
    assert counter.value() == pooled_agreement(rows.sum(axis=0)) == pytest.approx(2 * 5 / 12)
    sequences = np.stack([_steps([1, 0, 2]), _steps([3, 0, 3])])
    wrong = sequences.copy()
    wrong[1, 1] = _steps([2])[0]
    counter = ReadingCounter(read_outputs(["logits"], [sequences], batch=2))
    counter.add([sequences], [wrong])
    assert counter.rows().tolist() == [[1, 1], [0, 1]] and counter.value() == 0.5
    assert pooled_agreement(np.zeros(3)) == 1.0  # nothing detected by either: nothing disagrees


def _classifier(path: Path, batch: int | str) -> Path:
    """``y = x @ W``: a 4-class classifier over 3 features, batch ``batch`` (a number: fixed)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(
    ("batch", "skip", "limit", "span"),
    [
        ("N", 0, 32, (0, 32)),
        ("N", 40, 32, (64, 96)),  # batches of 32: the one straddling the skip is skipped whole
        (64, 0, 16, (0, 64)),  # a fixed batch: at least one
        (64, 32, 16, (64, 128)),  # a fixed batch after a skip: the skip rounds up, the probe never empties
    ],
)
def test_a_probe_after_a_skip_scores_whole_batches_that_begin_after_it(tmp_path, batch, skip, limit, span) -> None:
    model = _classifier(tmp_path / "c.onnx", batch)
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    labels = np.arange(200) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    dataset = open_dataset(str(tmp_path / "d.npz"), Runner(str(model)).inputs)
    probe = QualityProbe(ir.load(str(model)), dataset, limit=limit, skip=skip)
    assert (probe.start, probe.stop) == span
    assert np.array_equal(np.concatenate([f["x"] for f in probe.feeds]), x[span[0] : span[1]])
    assert np.array_equal(np.concatenate(probe.labels), labels[span[0] : span[1]])  # aligned with the feeds
    assert probe.metric == "accuracy" and len(probe.sample_rows(ir.load(str(model)))) == span[1] - span[0]
