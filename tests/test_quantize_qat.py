"""``quantize:qat=auto``: when all-int8 compute misses the budget, the quantized trial is fine-tuned against the
float model on samples the budget never judges, and the budget judges the fine-tuned model; the result keeps
the all-int8 graph with trained values, a plan replays them without training, and a run that cannot fine-tune
says what it would have needed. Also ``per_channel=false`` (one weight scale per tensor)."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import onnx
import pytest
from helpers import fused_ops, parse, run, yolox_head

from onnxopt.api import optimize
from onnxopt.passes.quantize.learned_values import LearnedValues

HEADER = '<ir_version: 8, opset_import: ["": 17]>\n'
BUDGETED = "quantize:fallback=none;target=vnni;max_db_loss=0.5"
BODY = """c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
 r1 = Relu(c1)
 c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
 r2 = Relu(c2)
 c3 = Conv<pads=[1,1,1,1]>(r2, w3, b3)
 a = Add(c3, r1)
 p = GlobalAveragePool(a)
 f = Flatten(p)
 y = Gemm<transB=1>(f, wf, bf)"""


def _subject(samples: int = 512) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A residual CNN whose all-int8 compute loses 0.8 dB beyond its weights-only int8 model on N(0, 1) inputs."""
    g = np.random.default_rng(3)

    def w(*shape: int, scale: float = 0.4) -> np.ndarray:
        return g.normal(0, scale, shape).astype(np.float32)

    weights = {
        "w1": w(8, 3, 3, 3), "b1": w(8, scale=0.1), "w2": w(8, 8, 3, 3, scale=0.2), "b2": w(8, scale=0.1),
        "w3": w(8, 8, 3, 3, scale=0.2), "b3": w(8, scale=0.1), "wf": w(5, 8), "bf": w(5, scale=0.1),
    }  # fmt: skip
    proto = parse(HEADER + "g (float[N,3,8,8] x) => (float[N,5] y) {\n " + BODY + "\n}", **weights)
    return proto, {"x": np.random.default_rng(1).normal(0, 1, (samples, 3, 8, 8)).astype(np.float32)}


def _quantize(result) -> object:
    return next(r for r in result.pipeline.records if r.name == "quantize")


def _structure(proto: onnx.ModelProto) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(n.op_type, n.name, tuple(n.input)) for n in proto.graph.node]


def _values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_fine_tuning_lets_all_int8_compute_meet_the_budget_with_the_same_graph(tmp_path) -> None:
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: onnxopt sets TF's flags first
        pytest.skip("the tf extra is not installed")
    proto, data = _subject()
    without = _quantize(optimize(proto, passes=BUDGETED, data=data))
    assert any("compute kept float on every node" in n for n in without.notes), without.notes

    plan = tmp_path / "plan.json"
    tuned = optimize(proto, tmp_path / "a.onnx", passes=BUDGETED + ";qat=auto;qat_epochs=4", data=data, save_plan=plan)
    record = _quantize(tuned)
    said = next((n for n in record.notes if n.startswith("qat: fine-tuned 4 epoch(s) on 432 samples")), None)
    assert said, record.notes
    assert re.search(r"; [\d,]+ of [\d,]+ int8 weight levels moved;", said), said
    assert not any("detection loss" in n for n in record.notes)  # a classifier's scores: not a detector's loss
    entry = next(e for e in json.loads(plan.read_text())["passes"].values() if e["pass"] == "quantize")
    measured = entry["measured"]["qat"]
    assert measured["before"] > 0.5 >= measured["after"]  # judged on the 32 samples fine-tuning never saw
    assert entry["float_nodes"] == [] and record.counts["values set by quantization-aware fine-tuning"] > 0
    # the budget's own measure on its samples picked the epoch: the start's drop, then each epoch's; the least kept
    chose = next(n for n in record.notes if n.startswith("qat: the budget's drop at the start"))
    drops = [float(v) for v in re.search(r"on its samples ([\d., ]+); kept epoch (\d)", chose).group(1).split(", ")]
    kept = int(re.search(r"kept epoch (\d)", chose).group(1))
    assert len(drops) == 5 and drops[kept] == min(drops) < drops[0], chose
    assert abs(drops[kept] - measured["after"]) < 1e-3 and abs(drops[0] - measured["before"]) < 1e-3
    assert "chosen by the accuracy budget's measure" in said

    # the same graph as all-int8 without a budget: every node, name and input; only values differ
    plain = optimize(proto, passes="quantize:fallback=none;target=vnni", data=data).model
    assert _structure(tuned.model) == _structure(plain)
    before, after = _values(plain), _values(tuned.model)
    assert before.keys() == after.keys()
    changed = [n for n in before if not np.array_equal(before[n], after[n])]
    assert any(before[n].dtype == np.int8 for n in changed) and any(before[n].dtype == np.float32 for n in changed)
    assert all(before[n].dtype == after[n].dtype and before[n].shape == after[n].shape for n in before)
    assert fused_ops(tuned.model, tmp_path)["QLinearConv"] == 3  # still onnxruntime's integer convolutions

    # the plan carries the trained values: a replay writes the same bytes without training
    assert entry["calibration"]["qat_values"]
    replay = optimize(proto, tmp_path / "b.onnx", passes=BUDGETED + ";qat=auto;qat_epochs=4", data=data, plan=plan)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert not any(n.startswith("qat:") for n in _quantize(replay).notes)


def test_without_enough_data_the_record_says_what_fine_tuning_needed() -> None:
    proto, data = _subject(samples=64)
    record = _quantize(optimize(proto, passes=BUDGETED + ";qat=auto", data=data))
    said = [n for n in record.notes if "qat=auto) did not run" in n]
    assert said and "at least 96 samples of --data (the run has 64)" in said[0], record.notes

    record = _quantize(optimize(proto, passes="quantize:fallback=none;target=vnni;max_db_loss=0;qat=auto"))  # random
    assert any("did not run: it needs --data" in n for n in record.notes), record.notes


def test_learned_values_apply_only_to_the_tensor_they_were_trained_from() -> None:
    proto, _ = _subject()
    import onnx_ir as ir

    model = ir.serde.deserialize_model(proto)
    start = model.graph.initializers["w1"].const_value.numpy().copy()
    learned = LearnedValues({"w1": start + 1, "b1": np.zeros(3, np.float32)}, {"w1": start, "b1": None})
    assert learned.apply(model.graph) == ["w1"]  # b1's shape differs: not the tensor trained
    assert np.array_equal(model.graph.initializers["w1"].const_value.numpy(), start + 1)
    assert learned.apply(model.graph) == []  # w1 no longer holds what training started from


def test_a_shared_constants_trained_copy_never_lands_on_another_readers_copy() -> None:
    """Two Muls read one constant: each gets its own quantized copy (k_quantized, k_quantized_1, ...). With the
    first Mul kept float the second reader's copy takes the first name, from the same start value: the owner
    (the reading node) tells them apart."""
    import onnx_ir as ir

    k = np.random.default_rng(0).normal(0, 1, (4, 1, 1)).astype(np.float32)
    proto = parse(
        HEADER + "g (float[N,4,5,5] a) => (float[N,4,5,5] y) {\n m1 = Mul(a, k)\n r = Relu(m1)\n m2 = Mul(r, k)\n"
        " y = Relu(m2)\n}",
        k=k,
    )
    data = {"a": np.random.default_rng(1).normal(0, 1, (32, 4, 5, 5)).astype(np.float32)}
    every = ir.serde.deserialize_model(optimize(proto, passes="quantize:fallback=none;target=vnni", data=data).model)
    first = next(n for n in every.graph if n.op_type == "Mul" and n.inputs[0].name == "a_dequantized")
    trained_name = first.inputs[1].producer().inputs[1].name  # the first reader's scale
    one_float = optimize(proto, passes=f"quantize:fallback=none;target=vnni;exclude=^{first.name}$", data=data)
    other = ir.serde.deserialize_model(one_float.model)
    start = other.graph.initializers[trained_name].const_value.numpy()
    assert np.array_equal(start, every.graph.initializers[trained_name].const_value.numpy())  # names alone collide
    learned = LearnedValues.trained(every, {trained_name: start * 2})
    assert learned.apply(other.graph) == []
    assert learned.apply(every.graph) == [trained_name]


def test_a_bias_is_requantized_where_its_layers_scales_changed() -> None:
    import onnx_ir as ir

    from onnxopt.passes.quantize.learned_values import realign_biases

    proto, data = _subject(samples=64)
    model = ir.serde.deserialize_model(optimize(proto, passes="quantize:fallback=none;target=vnni", data=data).model)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    x_scale, b_dq = conv.inputs[0].producer().inputs[1], conv.inputs[2].producer()
    bias = b_dq.inputs[0].const_value.numpy() * b_dq.inputs[1].const_value.numpy()
    assert realign_biases(model.graph) == 0  # as inserted: every bias at s_x * s_w
    x_scale.const_value = ir.tensor(x_scale.const_value.numpy() * 1.5, name=x_scale.name)
    assert realign_biases(model.graph) == 1
    w_scale = conv.inputs[1].producer().inputs[1].const_value.numpy()
    b_scale = b_dq.inputs[1].const_value.numpy()
    assert np.allclose(b_scale, x_scale.const_value.numpy() * w_scale, rtol=1e-6)
    assert np.abs(b_dq.inputs[0].const_value.numpy() * b_scale - bias).max() <= b_scale.max()  # the same bias


def test_learned_values_survive_the_plan_exactly() -> None:
    import onnx_ir as ir

    g = np.random.default_rng(0)
    levels = g.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    graph = ir.Graph([], [], nodes=[], initializers=[ir.Value(name="q", const_value=ir.tensor(levels, name="q"))])
    trained = np.clip(levels.astype(int) + g.integers(-2, 3, levels.shape), -127, 127).astype(np.int8)
    values = {"q": trained, "s": g.random(4).astype(np.float32), "b": g.integers(-9, 9, 4).astype(np.int32)}
    learned = LearnedValues(values, {"q": levels, "s": None, "b": None})
    back = LearnedValues.of_plan(json.loads(json.dumps(learned.to_plan())), graph)
    assert back.after.keys() == values.keys()
    assert all(back.after[k].dtype == v.dtype and np.array_equal(back.after[k], v) for k, v in values.items())


def test_per_tensor_weights_have_one_scale_and_still_run_integer_convolutions(tmp_path) -> None:
    proto, data = _subject(samples=64)
    result = optimize(proto, passes="quantize:fallback=none;target=vnni;per_channel=false", data=data)
    weight_dq = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and "w" in n.input[0][:2]]
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert len(weight_dq) == 4 and all(scales[n.input[1]].ndim == 0 for n in weight_dq)
    assert fused_ops(result.model, tmp_path)["QLinearConv"] == 3
    feeds = {"x": data["x"][:16]}
    expected, got = run(proto, feeds)[0], run(result.model, feeds)[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()  # int32 biases at s_x * s_w, one scale


def test_per_tensor_weights_refuse_per_channel_rounding() -> None:
    proto, data = _subject(samples=64)
    with pytest.raises(Exception, match="per_channel=false takes rounding=nearest"):
        optimize(proto, passes="quantize:per_channel=false;rounding=gptq", data=data)


def test_a_budgeted_search_says_each_step_on_the_progress_line() -> None:
    """Minutes of a search are never silent: every step of the budget's search is a progress phase."""

    class Recorder:
        def __init__(self) -> None:
            self.phases: list[str] = []

        def start(self, description: str, total: int | None = None) -> None:
            self.phases.append(description)

        def advance(self, units: int = 1) -> None:
            pass

        def phase(self, description: str) -> None:
            self.phases.append(description)

        def finish(self) -> None:
            pass

    proto, data = _subject(samples=64)
    recorder = Recorder()
    optimize(proto, passes=BUDGETED, data=data, progress=recorder)
    said = [p for p in recorder.phases if p.startswith("quantize: ")]
    assert "quantize: rounding the weights (the budget's yardstick)" in said
    assert "quantize: scoring all-int8 against the budget (max_db_loss)" in said
    assert any(p.startswith("quantize: budget: ranking layers by the error each adds") for p in said)
    assert any(p.startswith("quantize: budget: scoring with the ") for p in said), said


def test_a_detectors_fine_tuning_learns_from_the_detection_loss() -> None:
    """``qat=auto`` on outputs that read as detections (YOLOX-like ``x, y, w, h, obj, cls``) trains on the
    detection loss -- what the reading budget counts -- not the relative MSE over every background anchor."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("the tf extra is not installed")
    g = np.random.default_rng(3)
    proto = yolox_head(g, batch=None, objectness_bias=-1)
    data = {"x": g.normal(0, 1, (160, 3, 10, 10)).astype(np.float32)}
    passes = "quantize:fallback=none;target=vnni;samples=32;eval_samples=32;max_db_loss=0;qat=auto;qat_epochs=1"
    record = _quantize(optimize(proto, passes=passes, data=data))
    assert any(n.startswith("qat: fine-tuned 1 epoch(s)") for n in record.notes), record.notes
    assert "detection loss on output" in record.notes, record.notes
