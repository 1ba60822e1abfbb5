"""Quantization-aware fine-tuning: the fake-quant twin computes onnxruntime's integers for each fused op family,
trains with straight-through and LSQ gradients, writes back into the same QDQ graph, reproducibly, and the qat
pass declines in one line what it cannot do."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import BUNDLED, file_digest, parse, run, yolox_head

pytest.importorskip("tensorflow", reason="the tf extra is not installed")

from onnxopt.api import optimize
from onnxopt.bench.int8_kernels import saturates_here
from onnxopt.distill.fake_quant import MULTIPLIER, level_range
from onnxopt.distill.finetune import optimizer_step
from onnxopt.distill.graph_model import GraphModel
from onnxopt.distill.qat import QatConfig, check_quantized, qat, variable_groups
from onnxopt.passes.qat import levels_moved
from onnxopt.runtime import Runner

HEADER = '<ir_version: 8, opset_import: ["": 17]>\n'
QUANTIZE = "quantize:fallback=none;target=vnni"  # 8-bit weights on any CPU: the same graph everywhere


def _w(g: np.random.Generator, *shape: int, scale: float = 0.4) -> np.ndarray:
    return g.normal(0, scale, shape).astype(np.float32)


def _families() -> dict[str, tuple[str, dict[str, tuple[int, ...]], dict[str, np.ndarray]]]:
    """(graph body, inputs and their shapes, initializers) of one small graph per op family onnxruntime fuses."""
    g = np.random.default_rng(3)
    conv = {"w": _w(g, 4, 3, 3, 3), "b": _w(g, 4, scale=0.1)}
    x = {"x": (3, 6, 6)}
    pair = {"a": (4, 5, 5), "b": (4, 5, 5)}
    return {
        "conv_relu": ("c = Conv<pads=[1,1,1,1]>(x, w, b)\n y = Relu(c)", x, conv),
        "add": ("y = Add(a, b)", pair, {}),
        "mul": ("p = Mul(a, b)\n y = Mul(p, k)", pair, {"k": _w(g, 4, 1, 1, scale=1.0)}),
        "concat": ("c = Concat<axis=1>(a, b)\n y = Conv(c, w)", pair, {"w": _w(g, 3, 8, 1, 1)}),
        "global_average_pool": ("c = Conv<pads=[1,1,1,1]>(x, w, b)\n r = Relu(c)\n y = GlobalAveragePool(r)", x, conv),
        "sigmoid": ("c = Conv<pads=[1,1,1,1]>(x, w, b)\n y = Sigmoid(c)", x, conv),
        "space_to_depth": (
            "s = SpaceToDepth<blocksize=2>(x)\n y = Conv(s, w, b)",
            x,
            {"w": _w(g, 4, 12, 1, 1), "b": _w(g, 4, scale=0.1)},
        ),
        "maxpool": (
            "c = Conv<pads=[1,1,1,1]>(x, w, b)\n r = Relu(c)\n m = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)\n"
            "y = Conv(m, w2, b2)",
            x,
            {**conv, "w2": _w(g, 5, 4, 3, 3), "b2": _w(g, 5, scale=0.1)},
        ),
    }


def _float_model(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    body, inputs, weights = _families()[name]
    declared = ", ".join(f"float[N,{','.join(map(str, shape))}] {n}" for n, shape in inputs.items())
    proto = parse(HEADER + f"g ({declared}) => (float[N,?,?,?] y) {{\n {body}\n}}", **weights)
    g = np.random.default_rng(11)
    return proto, {n: g.normal(0, 1, (48, *shape)).astype(np.float32) for n, shape in inputs.items()}


def _quantized(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    proto, data = _float_model(name)
    result = optimize(proto, passes=QUANTIZE, data=data)
    assert result.pipeline.records[-1].status == "applied"
    return result.model, proto, data


def _output_scale(proto: onnx.ModelProto, name: str) -> float:
    """The step of the quantized tensor ``name`` is (or the float op writing it reads: a Relu left on an output)."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    producer = producers[name]
    while producer.op_type != "DequantizeLinear":
        assert producer.op_type in ("Relu", "MaxPool"), f"{name} is not quantized"
        producer = producers[producer.input[0]]
    scale = next(t for t in proto.graph.initializer if t.name == producer.input[1])
    return float(onnx.numpy_helper.to_array(scale))


@pytest.mark.parametrize("family", sorted(_families()))
def test_the_untrained_twin_matches_onnxruntime_within_one_level(family: str) -> None:
    """End to end, on every output: onnxruntime with graph optimizations off (float Q/DQ, as the file says) and
    on (its fixed-point QLinear kernels); layer by layer, each quantizer within one level."""
    quantized, _, data = _quantized(family)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    twin = GraphModel(quantized, train_quantized=True)
    assert check_quantized(twin, quantized, data) <= 1.0
    got = twin(data)
    optimized = Runner(quantized, optimize=True).run(data)
    # on an x86 CPU without VNNI the fused kernels saturate int16 on these 8-bit weights: not what the file says
    exact_here = not saturates_here(ir.serde.deserialize_model(quantized))
    for name, plain, fused in zip(twin.output_names, run(quantized, data), optimized, strict=True):
        level = _output_scale(quantized, name)
        for reference in (plain, fused) if exact_here else (plain,):
            assert np.max(np.abs(np.asarray(got[name]) - reference)) <= level * (1 + 1e-4), family


def test_fake_quant_gradients_are_straight_through_and_lsq() -> None:
    """x -> Q -> DQ: d/dx is 1 inside the range and 0 where clamped; d/ds is LSQ's ``(q - z) - x/s`` inside,
    ``(q - z)`` outside, times ``g = 1/sqrt(N * 255)`` (through the multiplier ``m``: times ``s0`` too)."""
    scale, zero = np.float32(0.05), np.uint8(100)
    body = "q = QuantizeLinear(x, s, z)\n y = DequantizeLinear(q, s, z)"
    proto = parse(HEADER + f"g (float[N, 8] x) => (float[N, 8] y) {{\n {body}\n}}", s=np.array(scale), z=np.array(zero))
    twin = GraphModel(proto, train_quantized=True)
    tf = twin.tf
    x = np.linspace(-7, 9, 16, dtype=np.float32).reshape(2, 8)  # the range is [-5, 7.75]
    feed = tf.Variable(x)
    multiplier = twin.variables["s" + MULTIPLIER]
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(twin({"x": feed})["y"])
    dx, dm = tape.gradient(y, [feed, multiplier])
    levels = np.clip(np.round(x / scale) + 100, 0, 255)
    inside = (np.round(x / scale) + 100 >= 0) & (np.round(x / scale) + 100 <= 255)
    np.testing.assert_array_equal(np.asarray(dx), inside.astype(np.float32))
    lsq = np.where(inside, (levels - 100) - x / scale, levels - 100).sum()
    assert float(dm) == pytest.approx(lsq * scale / np.sqrt(8 * 255), rel=1e-4)
    np.testing.assert_array_equal(np.asarray(twin({"x": x})["y"]), run(proto, {"x": x})[0])


def test_weight_bounds_follow_the_stored_levels() -> None:
    """7-bit weights (a CPU without VNNI) stay within 63; 8-bit within 127; other constants use their type's range."""
    assert level_range(np.dtype(np.int8), np.zeros(4, np.int8), np.array([-63, 5, 63], np.int8)) == (-63, 63)
    assert level_range(np.dtype(np.int8), np.zeros(4, np.int8), np.array([-64, 5], np.int8)) == (-127, 127)
    assert level_range(np.dtype(np.uint8), np.array(3, np.uint8), np.array([0, 255], np.uint8)) == (0, 255)
    assert level_range(np.dtype(np.int32), np.zeros(2, np.int32), np.array([7, -9], np.int32)) == (-(2**31), 2**31 - 1)
    proto, data = _float_model("conv_relu")
    seven_bit = optimize(proto, passes="quantize:fallback=none;target=avx2", data=data).model
    twin = GraphModel(seven_bit, train_quantized=True)
    assert twin.quant is not None and (
        twin.quant.shadows["w_quantized"].low,
        twin.quant.shadows["w_quantized"].high,
    ) == (-63, 63)
    assert check_quantized(twin, seven_bit, data) <= 1.0


def test_a_shadow_steps_the_learning_rate_in_levels_however_small_its_gradient() -> None:
    """Adam's first step moves every shadow by the learning rate, in levels, for a gradient of 1e-10 per level
    (weight gradients on the suite's recognizer have a median of 5e-10): with Keras's epsilon of 1e-7 it moved
    about 3e-5 of that. The scale multipliers keep that epsilon: a gradient so small barely moves them."""
    quantized, _, _ = _quantized("conv_relu")
    twin = GraphModel(quantized, only=set(), train_quantized=True, learn_scales=True)  # as qat() builds it
    assert twin.quant is not None and {"w_quantized", "b_quantized"} <= set(twin.quant.shadows)
    assert any(name.endswith(MULTIPLIER) for name in twin.variables)
    config = QatConfig(learning_rate=0.25)
    step = optimizer_step(twin.tf, twin, config.learning_rate, variable_groups(twin, config), steps=10)
    before = {name: v.numpy().copy() for name, v in twin.variables.items()}
    step([twin.tf.fill(v.shape, 1e-10) for v in twin.trainable])
    for name, variable in twin.variables.items():
        moved = before[name] - variable.numpy()
        if name in twin.quant.shadows:
            np.testing.assert_allclose(moved, 0.25, rtol=1e-2, err_msg=name)
        else:
            assert name.endswith(MULTIPLIER) and np.all(np.abs(moved) < 1e-6), name  # 1e-3 with the shadows' epsilon


def _trained(seed: int = 0) -> tuple[onnx.ModelProto, object]:
    """The maxpool family quantized, then fine-tuned toward a teacher whose weights differ (10 % larger, plus
    noise): a clear target the integers must move for (quantized from its own float weights, the tiny graph
    is already within 1e-4 of them)."""
    quantized, teacher, data = _with_teacher()
    config = QatConfig(epochs=2, batch=8, learning_rate=0.3, holdout=0.25, seed=seed)
    return quantized, qat(quantized, teacher, data, config)


def _with_teacher() -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    """The maxpool family quantized, a teacher whose weights differ (10 % larger, plus noise), and the data."""
    quantized, student, data = _quantized("maxpool")
    teacher = onnx.ModelProto()
    teacher.CopyFrom(student)
    g = np.random.default_rng(5)
    for tensor in teacher.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        tensor.CopyFrom(
            onnx.numpy_helper.from_array((array * 1.1 + g.normal(0, 0.05, array.shape)).astype(np.float32), tensor.name)
        )
    return quantized, teacher, data


@pytest.mark.parametrize("scores", [(0.0, -1.0, 2.0, 1.0), (0.0, -1.0, -2.0, -0.5)], ids=["epoch-2", "none"])
def test_a_chooser_picks_the_epoch_kept_and_the_start_scores_no_change(scores) -> None:
    """``choose`` (``quantize:qat=auto`` passes its budget's measure) scores the start and each epoch's values;
    the best is kept, whatever the held-back part says, and a start no epoch beats leaves the model as it came."""
    quantized, teacher, data = _with_teacher()
    seen: list[dict[str, np.ndarray]] = []

    def choose(changed: dict[str, np.ndarray]) -> float:
        seen.append({name: array.copy() for name, array in changed.items()})
        return scores[len(seen) - 1]

    config = QatConfig(epochs=3, batch=8, learning_rate=0.3, holdout=0.25, seed=0)
    result = qat(quantized, teacher, data, config, choose=choose)
    assert len(seen) == 4 and seen[0] == {} and all(seen[1:])  # the start, then three epochs that moved values
    best = int(np.argmax(scores))
    assert result.training.best_epoch == best and result.training.chosen == list(scores)
    assert result.changed.keys() == seen[best].keys()
    assert all(np.array_equal(result.changed[name], seen[best][name]) for name in seen[best])
    if not best:
        assert result.model.SerializeToString() == quantized.SerializeToString()


def test_write_back_keeps_the_graph_and_changes_levels_scales_and_biases() -> None:
    quantized, result = _trained()
    trained = result.model
    assert result.training.best_epoch > 0 and result.training.after > result.training.before
    assert [(n.op_type, n.name, list(n.input), list(n.output)) for n in trained.graph.node] == [
        (n.op_type, n.name, list(n.input), list(n.output)) for n in quantized.graph.node
    ]
    assert [(t.name, t.data_type, tuple(t.dims)) for t in trained.graph.initializer] == [
        (t.name, t.data_type, tuple(t.dims)) for t in quantized.graph.initializer
    ]
    onnx.checker.check_model(trained, full_check=True)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in trained.graph.initializer}
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed == set(result.changed)
    assert {"w_quantized", "w2_quantized", "b_quantized", "w_scale", "r_scale"} <= changed
    moved, total = levels_moved(quantized, result.changed)  # the int8 weights only: not biases, not zero points
    assert total == before["w_quantized"].size + before["w2_quantized"].size
    assert moved == sum(np.count_nonzero(before[w] != after[w]) for w in ("w_quantized", "w2_quantized")) > 0
    assert np.abs(after["w_quantized"]).max() <= 127 and np.abs(after["w2_quantized"]).max() <= 127
    # the int32 biases are re-expressed at the new s_x * s_w; MaxPool's input and output keep one scale
    for bias, x_scale, w_scale in (("b", "x_scale", "w_scale"), ("b2", "m_scale", "w2_scale")):
        np.testing.assert_array_equal(after[f"{bias}_scale"], (after[x_scale] * after[w_scale]).astype(np.float32))
    assert after["m_scale"] == after["r_scale"] and after["m_zero_point"] == after["r_zero_point"]


def test_a_tiny_run_is_byte_reproducible_for_a_seed() -> None:
    (_, first), (_, second) = _trained(seed=4), _trained(seed=4)
    assert first.training.best_epoch > 0
    assert first.model.SerializeToString() == second.model.SerializeToString()


def _declines(record) -> list[str]:
    assert record.name == "qat" and record.status != "applied"
    assert all("\n" not in reason for reason in record.skipped)
    return record.skipped


def test_declines_are_one_line(tmp_path, monkeypatch) -> None:
    proto, data = _float_model("conv_relu")
    random = optimize(proto, passes=f"{QUANTIZE},qat")  # no --data: seeded random inputs
    assert "--data" in _declines(random.pipeline.records[-1])[0]
    unquantized = optimize(proto, passes="qat", data=data)
    assert "not quantized" in _declines(unquantized.pipeline.records[-1])[0]
    lacking = parse(
        HEADER + 'g (float[N,3,6,6] x) => (float[N,4,6,6] y) {\n c = Conv<pads=[1,1,1,1]>(x, w, b)\n'
        ' y = Einsum<equation="nchw->nchw">(c)\n}', **_families()["conv_relu"][2],
    )  # fmt: skip
    named = optimize(lacking, passes=f"{QUANTIZE},qat", data=data)
    assert "Einsum" in _declines(named.pipeline.records[-1])[0]

    from onnxopt.convert import tf_import
    from onnxopt.errors import OnnxoptError

    def missing():
        raise OnnxoptError(tf_import.MISSING)

    monkeypatch.setattr(tf_import, "tensorflow", missing)
    no_tf = optimize(proto, passes=f"{QUANTIZE},qat", data=data)
    assert "onnxopt[tf]" in _declines(no_tf.pipeline.records[-1])[0]


def test_the_qat_pass_keeps_held_out_agreement_of_the_bundled_digits_model(tmp_path) -> None:
    """quantize then qat on 384 training images, twice with one seed (the same bytes); judged on the 1,000
    held-out images neither saw, against the quantized model without qat."""
    with np.load(BUNDLED / "train.npz") as train, np.load(BUNDLED / "eval.npz") as held_out:
        images, labels = held_out["image"], held_out["labels"]
        np.savez(tmp_path / "fit.npz", image=train["image"][:384])
    options = {"data": str(tmp_path / "fit.npz"), "seed": 0}
    plain = optimize(BUNDLED / "model.onnx", tmp_path / "int8.onnx", passes=f"lossless,{QUANTIZE}", **options)
    assert plain.pipeline.records[-1].status == "applied"
    for name in ("a", "b"):
        tuned = optimize(BUNDLED / "model.onnx", tmp_path / f"{name}.onnx",
                         passes=f"lossless,{QUANTIZE},qat:epochs=2;samples=384;holdout=0.25", **options)  # fmt: skip
        record = tuned.pipeline.records[-1]
        assert record.name == "qat" and record.status == "applied", record.skipped
    assert file_digest(tmp_path / "a.onnx") == file_digest(tmp_path / "b.onnx")
    reference = run(onnx.load(str(BUNDLED / "model.onnx")), {"image": images})[0].argmax(1)

    def agreement(path) -> float:
        return float(np.mean(run(onnx.load(str(path)), {"image": images})[0].argmax(1) == reference))

    before, after = agreement(tmp_path / "int8.onnx"), agreement(tmp_path / "a.onnx")
    # one image of slack: TensorFlow's float sums differ a little between CPUs
    assert after >= before - 1e-3, (before, after)
    accuracy = float(np.mean(run(onnx.load(str(tmp_path / "a.onnx")), {"image": images})[0].argmax(1) == labels))
    assert accuracy >= float(np.mean(reference == labels)) - 0.01


def test_the_training_batch_is_capped_to_fit_in_memory() -> None:
    """Training keeps a batch's every activation: a batch whose estimate exceeds half the available memory is
    made smaller (the glyph detector at batch 32 was killed for memory), never below 1; nothing known, unchanged."""
    from onnx import TensorProto, helper

    from onnxopt.distill.batch_memory import BYTES_PER_TENSOR_BYTE, fitting_batch, tensor_bytes_per_sample

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 100, 100])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4, 100, 100])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert tensor_bytes_per_sample(model) == 4 * 100 * 100 * 4  # y (the output z is not an intermediate)
    per_sample = 160_000 * BYTES_PER_TENSOR_BYTE
    assert fitting_batch(model, 32, None) == 32
    assert fitting_batch(model, 32, 2 * per_sample * 100) == 32
    assert fitting_batch(model, 32, 2 * per_sample * 5) == 5
    assert fitting_batch(model, 32, 10) == 1


def test_a_fixed_batch_detector_trains_one_sample_per_row_and_keeps_its_graph() -> None:
    """A YOLOX-like head exported for one sample (Reshape to the constant [1, 6, -1]) is trained in a rewritten
    layout that carries the batch, so the detection loss reads its columns; what is written back is the
    quantized graph as it came: fixed batch, the same shape constant, the same nodes."""
    g = np.random.default_rng(3)
    student = yolox_head(g, batch=1, objectness_bias=-2)
    data = {"x": g.normal(0, 1, (48, 3, 10, 10)).astype(np.float32)}
    quantized = optimize(student, passes=QUANTIZE, data=data).model
    teacher = onnx.ModelProto()
    teacher.CopyFrom(student)
    for tensor in teacher.graph.initializer:
        if tensor.name == "w":
            array = onnx.numpy_helper.to_array(tensor) * 1.1
            tensor.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), "w"))
    from onnxopt.distill.finetune import in_batch_layout, reading_batch

    work, _ = in_batch_layout(quantized, teacher, {"x": data["x"][:2]})
    assert reading_batch(quantized, 8) == 1 and reading_batch(work, 8) == 8  # the QDQ graph carries a batch too
    config = QatConfig(epochs=2, batch=8, learning_rate=0.3, holdout=0.25, seed=0, detection_loss=True)
    result = qat(quantized, teacher, data, config)
    assert result.training.agreement == "detection agreement"
    assert result.training.loss_note == "detection loss on output"  # it applied: the layout carries the batch
    trained = result.model
    assert trained.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert [(n.op_type, list(n.input)) for n in trained.graph.node] == [
        (n.op_type, list(n.input)) for n in quantized.graph.node
    ]
    assert {t.name for t in trained.graph.initializer} == {t.name for t in quantized.graph.initializer}
