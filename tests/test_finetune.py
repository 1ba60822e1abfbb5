"""Fine-tuning an ONNX student: the trainable twin matches onnxruntime op by op, write-back keeps the graph,
the distill pass trains deterministically and declines what it cannot train."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from helpers import file_digest, parse, run, yolox_head

pytest.importorskip("tensorflow", reason="the tf extra is not installed")

from onnxopt.api import optimize
from onnxopt.distill.finetune import FinetuneConfig, finetune, output_kinds, write_back
from onnxopt.distill.graph_model import GraphModel, UnsupportedOp, check_against
from onnxopt.runtime import Runner

RNG = np.random.default_rng(7)
HEADER = '<ir_version: 8, opset_import: ["": 17]>\n'


def _w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return RNG.normal(0, scale, shape).astype(np.float32)


# (graph body, input shape, initializers): one op (or a tiny chain) each, as the passes see them
CASES = {
    "conv_pads_strides": (
        "y = Conv<pads=[1,0,2,1], strides=[2,1]>(x, w, b)",
        (2, 3, 9, 8),
        {"w": _w(4, 3, 3, 3), "b": _w(4)},
    ),
    "conv_dilated": ("y = Conv<dilations=[2,2], pads=[2,2,2,2]>(x, w)", (1, 3, 8, 8), {"w": _w(5, 3, 3, 3)}),
    "conv_same_upper": ('y = Conv<auto_pad="SAME_UPPER", strides=[2,2]>(x, w)', (1, 3, 7, 7), {"w": _w(4, 3, 3, 3)}),
    "conv_grouped": ("y = Conv<group=2, pads=[1,1,1,1]>(x, w, b)", (2, 4, 6, 6), {"w": _w(6, 2, 3, 3), "b": _w(6)}),
    "conv_depthwise": (
        "y = Conv<group=4, pads=[1,1,1,1], strides=[2,2]>(x, w, b)",
        (2, 4, 7, 7),
        {"w": _w(8, 1, 3, 3), "b": _w(8)},
    ),
    "conv_1d": ("y = Conv<pads=[1,1]>(x, w, b)", (2, 3, 10), {"w": _w(4, 3, 3), "b": _w(4)}),
    "conv_transpose": (
        "y = ConvTranspose<strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]>(x, w, b)",
        (1, 3, 5, 5),
        {"w": _w(3, 4, 3, 3), "b": _w(4)},
    ),
    "batchnorm": (
        "y = BatchNormalization<epsilon=0.001>(x, s, b, m, v)",
        (2, 3, 4, 4),
        {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5},
    ),
    "gemm": ("y = Gemm<transB=1, alpha=0.5, beta=2.0>(x, w, b)", (3, 6), {"w": _w(4, 6), "b": _w(4)}),
    "matmul_3d": ("y = MatMul(x, w)", (2, 5, 6), {"w": _w(6, 3)}),
    "add_mul_div_sub": (
        "a = Add(x, c)\n m = Mul(a, c)\n d = Div(m, e)\n y = Sub(d, x)",
        (2, 3, 4, 4),
        {"c": _w(3, 1, 1), "e": np.abs(_w(1)) + 1},
    ),
    "activations": (
        "a = Relu(x)\n b = LeakyRelu<alpha=0.2>(x)\n c = Sigmoid(x)\n d = HardSigmoid(x)\n e = HardSwish(x)\n"
        "f = Tanh(x)\n g = Add(a, b)\n h = Add(c, d)\n i = Add(e, f)\n j = Add(g, h)\n y = Add(i, j)",
        (2, 3, 4, 4),
        {},
    ),
    "clip_prelu": (
        "a = Clip(x, lo, hi)\n y = PRelu(a, s)",
        (2, 3, 4, 4),
        {"lo": np.array(-1.0, np.float32), "hi": np.array(6.0, np.float32), "s": _w(3, 1, 1)},
    ),
    "concat_split_slice": (
        "a, b = Split<axis=1>(x, sp)\n c = Concat<axis=1>(b, a)\n y = Slice(c, st, en, ax, stp)",
        (2, 5, 6, 6),
        {
            "sp": np.array([2, 3], np.int64),
            "st": np.array([1, 0], np.int64),
            "en": np.array([5, 100], np.int64),
            "ax": np.array([1, 3], np.int64),
            "stp": np.array([1, 2], np.int64),
        },
    ),
    "pools": (
        "a = MaxPool<kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]>(x)\n"
        "b = AveragePool<kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]>(x)\n"
        "c = Add(a, b)\n g = GlobalAveragePool(x)\n y = Add(c, g)",
        (2, 3, 7, 7),
        {},
    ),
    "maxpool_ceil": ("y = MaxPool<kernel_shape=[2,2], strides=[2,2], ceil_mode=1>(x)", (1, 2, 7, 7), {}),
    "avgpool_include_pad": (
        "y = AveragePool<kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1>(x)",
        (1, 2, 5, 5),
        {},
    ),
    "reshape_flatten_transpose": (
        "a = Transpose<perm=[0,2,3,1]>(x)\n b = Reshape(a, s)\n c = Flatten<axis=1>(b)\n"
        "d = Unsqueeze(c, ax)\n y = Squeeze(d, ax)",
        (2, 3, 4, 4),
        {"s": np.array([0, -1, 3], np.int64), "ax": np.array([1], np.int64)},
    ),
    "resize_nearest": (
        'y = Resize<mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor">(x, , sc)',
        (1, 2, 3, 4),
        {"sc": np.array([1, 1, 2, 2], np.float32)},
    ),
    "resize_linear": ('y = Resize<mode="linear">(x, , sc)', (1, 2, 3, 4), {"sc": np.array([1, 1, 2, 1.5], np.float32)}),
    "resize_align_corners": (
        'y = Resize<mode="linear", coordinate_transformation_mode="align_corners">(x, , , sz)',
        (1, 2, 3, 4),
        {"sz": np.array([1, 2, 7, 5], np.int64)},
    ),
    "softmax": ("y = Softmax<axis=1>(x)", (3, 7), {}),
    "space_to_depth": ("y = SpaceToDepth<blocksize=2>(x)", (2, 3, 4, 6), {}),
    "depth_to_space_dcr": ("y = DepthToSpace<blocksize=2>(x)", (2, 8, 3, 2), {}),
    "depth_to_space_crd": ('y = DepthToSpace<blocksize=2, mode="CRD">(x)', (2, 8, 3, 2), {}),
    "shape_ops": (
        "s = Shape(x)\n i = Gather<axis=0>(s, k)\n u = Unsqueeze(i, z)\n c = Concat<axis=0>(u, m)\n y = Reshape(x, c)",
        (2, 3, 4),
        {"k": np.array(0, np.int64), "z": np.array([0], np.int64), "m": np.array([-1], np.int64)},
    ),
    "lstm_bidirectional": (
        'y, yh, yc = LSTM<hidden_size=5, direction="bidirectional">(x, w, r, b)',
        (6, 2, 4),
        {"w": _w(2, 20, 4), "r": _w(2, 20, 5), "b": _w(2, 40)},
    ),
}


RANKS = {"lstm_bidirectional": (4, 3, 3), "shape_ops": (2,), "reshape_flatten_transpose": (2,)}


def _model(case: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    body, shape, weights = CASES[case]
    ranks = RANKS.get(case, (len(shape),))
    names = ["y", "yh", "yc"][: len(ranks)]
    outputs = ", ".join(f"float[{','.join(f'd{i}' for i in range(r))}] {n}" for n, r in zip(names, ranks, strict=False))
    text = HEADER + f"g (float{list(shape)} x) => ({outputs}) {{\n {body}\n}}"
    return parse(text, **weights), {"x": RNG.normal(0, 1, shape).astype(np.float32)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_twin_matches_onnxruntime(case: str) -> None:
    proto, feeds = _model(case)
    twin = GraphModel(proto)
    error = check_against(twin, Runner(proto).run, feeds, tolerance=1e-4)
    assert error < 1e-4


def test_an_op_the_twin_lacks_is_declined_by_name() -> None:
    proto = parse(HEADER + 'g (float[2, 3] x) => (float[a, b] y) { y = Einsum<equation="ij->ji">(x) }')
    with pytest.raises(UnsupportedOp, match="Einsum"):
        GraphModel(proto)


CNN = (
    HEADER
    + """g (float[N, 1, 8, 8] x) => (float[N, 4] y) {
    c = Conv<pads=[1,1,1,1]>(x, w1, b1)
    r = Relu(c)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    l = Gemm<transB=1>(f, w2, b2)
    y = Softmax<axis=1>(l)
}"""
)


def _cnn(seed: int) -> onnx.ModelProto:
    g = np.random.default_rng(seed)
    weights = {"w1": g.normal(0, 0.5, (6, 1, 3, 3)), "b1": g.normal(0, 0.1, 6), "w2": g.normal(0, 0.5, (4, 6)),
               "b2": g.normal(0, 0.1, 4)}  # fmt: skip
    return parse(CNN, **{k: v.astype(np.float32) for k, v in weights.items()})


def test_finetune_moves_a_student_toward_its_teacher_and_keeps_the_graph() -> None:
    teacher, student = _cnn(0), _cnn(1)
    inputs = {"x": np.random.default_rng(12).normal(0, 1, (128, 1, 8, 8)).astype(np.float32)}  # order-proof
    assert output_kinds(student) == {"y": "classes"}
    result = finetune(student, teacher, inputs, FinetuneConfig(epochs=15, batch=16, learning_rate=0.01, seed=3))
    assert result.after > result.before and result.best_epoch > 0
    trained = result.model
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in student.graph.node]
    assert [(t.name, tuple(t.dims)) for t in trained.graph.initializer] == [
        (t.name, tuple(t.dims)) for t in student.graph.initializer
    ]
    onnx.checker.check_model(trained, full_check=True)
    # the student's outputs on the held-back samples moved toward the teacher's
    held = inputs["x"][:32]
    (t_out,) = run(teacher, {"x": held})
    (s_before,) = run(student, {"x": held})
    (s_after,) = run(trained, {"x": held})
    assert np.abs(s_after - t_out).mean() < np.abs(s_before - t_out).mean()


def test_write_back_refuses_a_changed_shape() -> None:
    student = _cnn(1)
    with pytest.raises(UnsupportedOp, match="shape"):
        write_back(student, {"w1": np.zeros((3, 1, 3, 3), np.float32)})


def test_the_distill_pass_is_deterministic_for_a_seed(tmp_path) -> None:
    """Prune then distill twice with one seed: the same bytes; the weights changed, the ops did not."""
    path, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_cnn(0), str(path))
    # its own generator: the data (and whether an epoch beats the start) must not depend on test order
    np.savez(data, x=np.random.default_rng(11).normal(0, 1, (96, 1, 8, 8)).astype(np.float32))
    spec = "prune-channels:ratio=0.5,distill:epochs=2;batch=16;learning_rate=0.01"
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.onnx"
        result = optimize(path, out, passes=spec, data=str(data), seed=5)
        record = next(r for r in result.pipeline.records if r.name == "distill")
        assert record.status == "applied", record.skipped
        assert any("held-back samples" in note for note in record.notes)
        outs.append(out)
    assert file_digest(outs[0]) == file_digest(outs[1])


def test_distill_declines_random_data(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(0), str(path))
    result = optimize(path, tmp_path / "o.onnx", passes="distill")
    record = next(r for r in result.pipeline.records if r.name == "distill")
    assert record.status != "applied" and "--data" in " ".join(record.skipped)


def test_a_missed_distillation_budget_exits_3_and_says_so(tmp_path, capsys) -> None:
    """One channel of six left: fine-tuning cannot win agreement back, and the run does not pretend."""
    from onnxopt.cli import main

    path, data, out = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "o.onnx"
    onnx.save(_cnn(0), str(path))
    np.savez(data, x=RNG.normal(0, 1, (80, 1, 8, 8)).astype(np.float32))
    spec = "prune-channels:ratio=0.9,distill:epochs=1;batch=16;max_drop=0"
    assert main(["optimize", str(path), str(out), "--passes", spec, "--data", str(data)]) == 3
    err = capsys.readouterr().err
    assert "distill missed its budget" in err and "max_drop 0" in err
    assert out.exists()  # written, and said to be short of the budget


def test_prune_prunes_less_without_enough_data(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(0), str(path))
    result = optimize(path, tmp_path / "o.onnx", passes="prune-channels:ratio=0.5;without_data_ratio=0.2")
    record = next(r for r in result.pipeline.records if r.name == "prune-channels")
    assert any("no --data" in n and "0.2 of the channels instead of 0.5" in n for n in record.notes)


def test_a_time_budget_stops_training_and_says_so() -> None:
    teacher, student = _cnn(0), _cnn(1)
    inputs = {"x": RNG.normal(0, 1, (64, 1, 8, 8)).astype(np.float32)}
    result = finetune(student, teacher, inputs, FinetuneConfig(epochs=1000, batch=8, time_budget=1e-3, seed=0))
    assert result.stopped_by_budget and len(result.history) == 1  # the epoch running at the limit is the last


def _fixed_batch_detector(batch: str | int = 1) -> onnx.ModelProto:
    """A YOLOX-like head exported with batch 1 (its input declares ``batch``): Reshape to [1, 6, -1] then
    Transpose, so a batch-free run of several samples mixes them with the channels."""
    return yolox_head(np.random.default_rng(4), batch=1, objectness_bias=0.0, declared=str(batch))


def test_a_fixed_batch_graph_is_trained_and_read_one_sample_per_row() -> None:
    """Run batch-free, a batch of the glyph detector came out as [1, N * A, 6] with samples and channels mixed,
    and the held-back meter read it as a sequence (agreement 0). Now both graphs are rewritten to carry the batch
    (confirmed in onnxruntime), so training sees one sample per row (the detection loss reads its columns) and
    the meter reads detections; a graph the rewrite cannot confirm is still read one sample at a time."""
    from onnxopt.distill.finetune import in_batch_layout, reading_batch

    teacher = _fixed_batch_detector()
    assert reading_batch(teacher, 16) == 1 and reading_batch(_fixed_batch_detector("N"), 16) == 16
    student = onnx.ModelProto()
    student.CopyFrom(teacher)
    inputs = {"x": np.random.default_rng(5).normal(0, 1, (40, 3, 10, 10)).astype(np.float32)}
    work, taught = in_batch_layout(student, teacher, {"x": inputs["x"][:2]})
    assert reading_batch(work, 16) == 16 and reading_batch(taught, 16) == 16
    result = finetune(student, teacher, inputs, FinetuneConfig(epochs=1, batch=8, seed=0, detection_loss=True))
    assert result.agreement == "detection agreement" and result.before == 1.0
    assert result.loss_note == "detection loss on output"
    # distill's default (None) teaches it the same way; False keeps the relative MSE
    auto = finetune(student, teacher, inputs, FinetuneConfig(epochs=1, batch=8, seed=0, detection_loss=None))
    assert auto.loss_note == "detection loss on output"
    assert all(np.array_equal(auto.weights[k], v) for k, v in result.weights.items())
    never = finetune(student, teacher, inputs, FinetuneConfig(epochs=1, batch=8, seed=0, detection_loss=False))
    assert never.loss_note == ""
    # the written model is the student's own graph: its fixed batch and shape constant are kept
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert [n.input[1] for n in result.model.graph.node if n.op_type == "Reshape"] == ["shape"]


def test_a_detection_loss_that_cannot_apply_says_it_used_the_mse() -> None:
    teacher = _fixed_batch_detector("N")
    inputs = {"x": np.random.default_rng(5).normal(0, 1, (20, 3, 10, 10)).astype(np.float32)}
    config = FinetuneConfig(epochs=1, batch=8, seed=0, detection_loss=True, metric="values")
    result = finetune(teacher, teacher, inputs, config)
    assert result.loss_note.startswith("detection_loss: no output read as detections")
    # left to itself (distill's default) it applies where outputs read as detections, and says nothing elsewhere
    quiet = finetune(teacher, teacher, inputs, dataclasses.replace(config, detection_loss=None))
    assert quiet.loss_note == ""


def test_distill_teaches_a_detector_with_the_detection_loss_by_default() -> None:
    from onnxopt.passes.distill import DistillPassConfig

    assert DistillPassConfig().finetune_config(seed=0).detection_loss is None
