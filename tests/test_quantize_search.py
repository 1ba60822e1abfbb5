"""quantize's two searches: float fallback by measured speed (fallback=profile) and the accuracy budget (max_drop).

The speed search is tested with a Context whose measurements are scripted (timing on a shared CI machine cannot
be asserted); the budget search runs for real on a model whose int8 version misses the budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import parse

from onnxopt import io
from onnxopt.bench.stats import Ratio
from onnxopt.data import RandomDataset, open_dataset
from onnxopt.optimizer import Context, Pipeline
from onnxopt.optimizer.node_profile import NodeProfile
from onnxopt.optimizer.recipe import build_passes, parse_spec
from onnxopt.runtime import Runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from mobilenet_like import INPUT_SHAPE, mobilenet_like

NET = """<ir_version: 8, opset_import: ["": 13]>
g (float[N, 3, 8, 8] x) => (float[N, 4] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1)
    r1 = Relu(c1)
    a = AveragePool<kernel_shape=[2,2], strides=[2,2]>(r1)
    c2 = Conv(a, w2)
    p = GlobalAveragePool(c2)
    y = Flatten(p)
}"""


class ScriptedContext(Context):
    """Timing from a script: a node costs 10 µs in float, 6 µs in int8 plus ``slow_int8[op_type]``.

    A node runs in int8 when onnxruntime would fuse it: its data input comes from a DequantizeLinear and its
    output goes to a QuantizeLinear."""

    def __init__(self, slow_int8: dict[str, float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.slow_int8 = slow_int8

    def _times(self, model) -> dict[str, float]:
        times = {}
        for node in model.graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            source = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            to_q = any(u.node.op_type == "QuantizeLinear" for u in node.outputs[0].uses())
            int8 = source is not None and source.op_type == "DequantizeLinear" and to_q
            times[node.name] = 6.0 + self.slow_int8.get(node.op_type, 0.0) if int8 else 10.0
        return times

    def profiles(self, models, *, batch: int = 1) -> list[NodeProfile]:
        return [NodeProfile(self._times(model), {n.name: n.op_type for n in model.graph}) for model in models]

    def latency_ratio(self, baseline, candidate, *, batch: int = 1, seconds: float = 1.0) -> Ratio:
        ratio = sum(self._times(candidate).values()) / sum(self._times(baseline).values())
        return Ratio(ratio, ratio, ratio)


def _run(spec: str, context: Context, model: onnx.ModelProto | None = None):
    ir_model = io.from_proto(model or parse(NET, w1=_W1, w2=_W2))
    result = Pipeline(build_passes(parse_spec(spec))).run(ir_model, context)
    return result.records[-1], result


_RNG = np.random.default_rng(0)
_W1 = _RNG.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
_W2 = _RNG.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)


def test_op_types_slower_in_int8_stay_float() -> None:
    record, result = _run("quantize:fallback=profile", ScriptedContext({"AveragePool": 300.0}))
    assert record.status == "applied"
    pool = next(n for n in result.model.graph if n.op_type == "AveragePool")
    kept = [row for row in record.details if "kept" in row]  # the other rows: each output's SNR
    assert [row["node"] for row in kept] == [pool.name]
    assert kept[0]["kept"] == "float (slower in int8)" and kept[0]["int8_us"] == 306.0
    # a float island: no Q/DQ on either side, so onnxruntime cannot fuse it back into QLinearAveragePool
    assert pool.inputs[0].producer().op_type != "DequantizeLinear"
    assert all(u.node.op_type != "QuantizeLinear" for u in pool.outputs[0].uses())
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph)  # the rest is still int8


def test_int8_slower_than_float_leaves_the_model_float() -> None:
    # every int8 kernel slower than float, and float islands never pay (their scripted cost says so)
    class NoGain(ScriptedContext):
        def latency_ratio(self, baseline, candidate, *, batch: int = 1, seconds: float = 1.0) -> Ratio:
            if baseline.graph.num_nodes() != candidate.graph.num_nodes() and any(
                n.op_type == "QuantizeLinear" for n in baseline.graph
            ):
                return Ratio(1.05, 1.04, 1.06)  # a fallback candidate: not faster
            return super().latency_ratio(baseline, candidate, batch=batch, seconds=seconds)

    slow = dict.fromkeys(["Conv", "AveragePool", "GlobalAveragePool", "Flatten"], 20.0)
    record, result = _run("quantize:fallback=profile;float_weights=float", NoGain(slow))
    assert record.status == "unchanged"
    assert any("left float" in s for s in record.skipped)
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph)
    assert any("int8 latency" in n and "x float at batch 1" in n for n in record.notes)
    # by default the compute stays float but the weights are stored int8 (smaller, at float speed)
    record, result = _run("quantize:fallback=profile", NoGain(slow))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in result.model.graph)
    assert any("compute kept float on every node" in n for n in record.notes)


def test_a_budget_is_not_searched_when_int8_is_not_faster() -> None:
    # int8 slower everywhere: speed is decided before the budget, whose ranking and trials would be wasted
    class NoGain(ScriptedContext):
        def latency_ratio(self, baseline, candidate, *, batch: int = 1, seconds: float = 1.0) -> Ratio:
            return Ratio(1.05, 1.04, 1.06)

        def layer_errors(self, *args, **kwargs):
            raise AssertionError("the budget's sensitivity ranking ran")

    slow = dict.fromkeys(["Conv", "AveragePool", "GlobalAveragePool", "Flatten"], 20.0)
    context = NoGain(slow, dataset=RandomDataset(Runner(parse(NET, w1=_W1, w2=_W2).SerializeToString()).inputs, 32,
                                                 dims={}, seed=0))  # fmt: skip
    record, result = _run("quantize:fallback=profile;max_db_loss=0", context)
    assert not any(n.startswith("all int8:") for n in record.notes)  # the budget never scored a trial
    assert any("compute kept float on every node" in n for n in record.notes)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in result.model.graph)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    rng = np.random.default_rng(0)
    model = mobilenet_like(rng.standard_normal((64, *INPUT_SHAPE), dtype=np.float32))
    folder = tmp_path_factory.mktemp("mbq")
    data = folder / "data.npz"
    np.savez(data, input=rng.standard_normal((128, *INPUT_SHAPE), dtype=np.float32))
    return model, data


def test_accuracy_budget_keeps_the_most_sensitive_layers_float(mobilenet) -> None:
    model, data = mobilenet
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    plain, _ = _run("lossless,quantize:eval_samples=128", Context(dataset=dataset), model)
    budget, result = _run("lossless,quantize:max_drop=0.05;eval_samples=128", Context(dataset=dataset), model)
    assert plain.status == budget.status == "applied"
    notes = " ".join(budget.notes)
    all_int8 = float(notes.split("all int8 ")[1].split(" ")[0])
    assert 1 - all_int8 > 0.05  # plain int8 misses this budget (top-1 agreement)
    kept = [row for row in budget.details if row.get("kept") == "float (accuracy budget)"]
    assert kept and all(row["added_db"] is not None for row in kept)
    assert "kept" in notes and "drop" in notes
    final_drop = float(notes.split("for the budget: top-1 agreement drop ")[1].split()[0])
    assert final_drop <= 0.05
    floats = {n.name for n in result.model.graph if n.op_type == "Conv"} & {row["node"] for row in kept}
    assert floats  # the kept layers are real Convs of the model
    for node in result.model.graph:
        if node.name in floats:
            weight = node.inputs[1]
            assert weight.const_value is not None and weight.const_value.dtype.name == "FLOAT"


CHAIN = """<ir_version: 8, opset_import: ["": 13]>
g (float[N, 3, 8, 8] x) => (float[N, 8] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1)
    r1 = Relu(c1)
    c2 = Conv<pads=[1,1,1,1]>(r1, w2)
    r2 = Relu(c2)
    c3 = Conv<pads=[1,1,1,1]>(r2, w3)
    r3 = Relu(c3)
    c4 = Conv(r3, w4)
    p = GlobalAveragePool(c4)
    y = Flatten(p)
}"""


class SlowWhenMixed(ScriptedContext):
    """The pool's int8 kernel costs 300 µs more once any Conv runs float."""

    def _times(self, model) -> dict[str, float]:
        times = super()._times(model)
        mixed = any(times[n.name] == 10.0 for n in model.graph if n.op_type == "Conv")
        for node in model.graph:
            if node.op_type == "GlobalAveragePool" and mixed and times[node.name] == 6.0:
                times[node.name] += 300.0
        return times


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    shapes = {"w1": ((8, 3, 3, 3), 0.5), "w2": ((8, 8, 3, 3), 0.2), "w3": ((8, 8, 3, 3), 0.2)}
    shapes["w4"] = ((8, 8, 1, 1), 0.3)
    return parse(CHAIN, **{k: rng.normal(0, sd, shape).astype(np.float32) for k, (shape, sd) in shapes.items()})


def test_nodes_slower_in_int8_once_the_budget_mixed_precisions_are_kept_float_too() -> None:
    """An int8 kernel can be fast in an all-int8 chain and slow beside float layers (onnxruntime's uint8 MaxPool
    outside an NHWC chain); the speed round before the budget cannot see it, so the budget's mixed model is
    profiled again: such nodes go float when that is measurably faster and the budget still holds. Here the
    budget keeps the stem float, the pool's int8 kernel then costs 300 µs more, and without the second round
    the mixed model would run slower than float and every node would go back to float compute."""

    model = _chain()
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    spec = "quantize:fallback=profile;target=vnni;max_db_loss=1;eval_samples=32"
    record, result = _run(spec, SlowWhenMixed({}, dataset=dataset), model)
    assert record.status == "applied", record.notes
    kept = {row["node"]: row["kept"] for row in record.details if "kept" in row}
    pool = next(n for n in result.model.graph if n.op_type == "GlobalAveragePool")
    assert "float (accuracy budget)" in kept.values(), kept  # the budget mixed the precisions
    assert kept.get(pool.name) == "float (slower in int8 after the budget)", kept
    said = "after the budget: 1 node(s) slowed in int8 by float neighbours; 1 kept float"
    assert any(n.startswith(said) for n in record.notes), record.notes
    assert pool.inputs[0].producer().op_type != "DequantizeLinear"  # it runs float
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph), record.notes  # the rest still int8


def test_the_round_after_the_budget_compares_profiles_taken_in_turn() -> None:
    """Every profile of the search runs the models it compares in turn: the round after the budget profiles the
    float model, the mixed model and the first round's trial together. Here the machine is scripted to run three
    times slower from the second profile on: compared with the first profile's times (as when each model was
    profiled once, one after the other), every int8 node would look slowed by its float neighbours; profiled in
    turn, none is."""

    class LoadedLater(ScriptedContext):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls: list[list] = []

        def profiles(self, models, *, batch: int = 1) -> list[NodeProfile]:
            self.calls.append(list(models))
            found = super().profiles(models, batch=batch)
            slower = 3.0 if len(self.calls) > 1 else 1.0
            return [NodeProfile({k: v * slower for k, v in p.times.items()}, p.ops) for p in found]

    model = _chain()
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    context = LoadedLater({}, dataset=dataset)
    record, _ = _run("quantize:fallback=profile;max_db_loss=1;eval_samples=32", context, model)
    assert record.status == "applied", record.notes
    assert "float (accuracy budget)" in {row.get("kept") for row in record.details}  # the budget mixed precisions
    first, after = context.calls
    assert len(first) == 2 and len(after) == 3 and after[0] is first[0] and after[2] is first[1]
    assert "after the budget: 0 node(s) slowed in int8 by float neighbours" in record.notes, record.notes


def test_the_round_after_the_budget_is_undone_when_the_budget_then_fails() -> None:
    """The nodes the round after the budget moves to float change what is rounded, so the budget is checked
    again: here it is scripted to fail once the pool runs float, the round is undone (the pool stays int8), and
    the mixed model, slower than float with the slowed pool, goes back to float compute on every node."""

    class FailsWithFloatPool(SlowWhenMixed):
        def snr_budget(self, reference, max_db_loss, limit, *, skip=0):
            budget = super().snr_budget(reference, max_db_loss, limit, skip=skip)
            measured = budget.drop

            def drop(candidate) -> float:
                pool = next(n for n in candidate.graph if n.op_type == "GlobalAveragePool")
                source = pool.inputs[0].producer()
                pool_int8 = source is not None and source.op_type == "DequantizeLinear"
                return measured(candidate) if pool_int8 else budget.max_drop + 1.0

            budget.drop = drop  # type: ignore[method-assign]  # the script
            return budget

    model = _chain()
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    spec = "quantize:fallback=profile;target=vnni;max_db_loss=1;eval_samples=32"
    record, result = _run(spec, FailsWithFloatPool({}, dataset=dataset), model)
    kept = {row["node"]: row["kept"] for row in record.details if "kept" in row}
    assert "float (accuracy budget)" in kept.values(), kept  # the budget mixed the precisions
    assert "float (slower in int8 after the budget)" not in kept.values(), kept
    said = "after the budget: 1 node(s) slowed in int8 by float neighbours; none kept float (with them float: "
    assert any(n.startswith(said) for n in record.notes), record.notes
    assert any("compute kept float on every node" in n for n in record.notes), record.notes
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph)


def test_a_round_the_budget_misses_by_a_hair_keeps_the_budgets_next_ranked_layers_float_too() -> None:
    """The round after the budget moves a slowed node to float, and the budget, checked again, misses (as a bound
    of 0.0101 against 0.01 did on the glyph detector): the budget's next ranked layer goes float too, the model
    is timed against the one before the round, and being faster it is kept -- the pool float, more Convs float
    than the budget needed, the rest still int8 (``float_weights=float``: the script prices each node a float
    layer's int8 weights add as a layer)."""

    class FailsWithFloatPoolAlone(SlowWhenMixed):
        needed: int | None = None  # the fewest float Convs the budget's own trials met it with

        def snr_budget(self, reference, max_db_loss, limit, *, skip=0):
            budget = super().snr_budget(reference, max_db_loss, limit, skip=skip)
            measured = budget.drop

            def drop(candidate) -> float:
                float_convs = sum(_runs_float(n) for n in candidate.graph if n.op_type == "Conv")
                pool = next(n for n in candidate.graph if n.op_type == "GlobalAveragePool")
                got = measured(candidate)
                if not _runs_float(pool):
                    if got <= budget.max_drop and float_convs:
                        self.needed = min(self.needed or float_convs, float_convs)
                    return got
                return got if self.needed is not None and float_convs > self.needed else budget.max_drop + 1.0

            budget.drop = drop  # type: ignore[method-assign]  # the script
            return budget

    model = _chain()
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    context = FailsWithFloatPoolAlone({}, dataset=dataset)
    record, result = _run(
        "quantize:fallback=profile;target=vnni;max_db_loss=1;eval_samples=32;float_weights=float", context, model
    )
    assert record.status == "applied", record.notes
    kept = {row["node"]: row["kept"] for row in record.details if "kept" in row}
    pool = next(n for n in result.model.graph if n.op_type == "GlobalAveragePool")
    assert kept.get(pool.name) == "float (slower in int8 after the budget)", kept
    said = "after the budget: 1 node(s) slowed in int8 by float neighbours; 1 kept float with the budget's next "
    assert any(n.startswith(said) and "measured faster" in n for n in record.notes), record.notes
    float_convs = [n.name for n in result.model.graph if n.op_type == "Conv" and _runs_float(n)]
    assert context.needed is not None and len(float_convs) == context.needed + 1, (float_convs, record.notes)
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph)  # the rest still int8


POOLED = CHAIN.replace(
    "    p = GlobalAveragePool(c4)", "    m = MaxPool<kernel_shape=[2,2]>(c4)\n    p = GlobalAveragePool(m)"
)


def test_a_round_the_budget_misses_keeps_float_the_op_types_that_hold_it_alone() -> None:
    """The round after the budget holds two op types its float neighbours slowed: the pool (400 µs lost) and a
    MaxPool (300 µs) whose move to float the budget never allows, whatever else is float -- so neither the whole
    round nor the budget's next ranked layers meet it. Its op types one at a time: the pool alone holds and is
    faster, so it is kept float; the MaxPool stays int8 (the budget is scripted)."""

    class SlowPoolsWhenMixed(ScriptedContext):
        def _times(self, model) -> dict[str, float]:
            times = super()._times(model)
            mixed = any(times[n.name] == 10.0 for n in model.graph if n.op_type == "Conv")
            extra = {"GlobalAveragePool": 400.0, "MaxPool": 300.0}
            for node in model.graph:
                if node.op_type in extra and mixed and times[node.name] == 6.0:
                    times[node.name] += extra[node.op_type]
            return times

        def snr_budget(self, reference, max_db_loss, limit, *, skip=0):
            budget = super().snr_budget(reference, max_db_loss, limit, skip=skip)

            def drop(candidate) -> float:  # all int8 misses, any float Conv meets it, a float MaxPool never does
                maxpool = next(n for n in candidate.graph if n.op_type == "MaxPool")
                if _runs_float(maxpool):
                    return budget.max_drop + 1.0
                return 0.0 if any(_runs_float(n) for n in candidate.graph if n.op_type == "Conv") else 2.0

            budget.drop = drop  # type: ignore[method-assign]  # the script
            return budget

    rng = np.random.default_rng(0)
    shapes = {
        "w1": ((8, 3, 3, 3), 0.5),
        "w2": ((8, 8, 3, 3), 0.2),
        "w3": ((8, 8, 3, 3), 0.2),
        "w4": ((8, 8, 1, 1), 0.3),
    }
    model = parse(POOLED, **{k: rng.normal(0, sd, shape).astype(np.float32) for k, (shape, sd) in shapes.items()})
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    record, result = _run(
        "quantize:fallback=profile;max_db_loss=1;eval_samples=32", SlowPoolsWhenMixed({}, dataset=dataset), model
    )
    assert record.status == "applied", record.notes
    kept = {row["node"]: row["kept"] for row in record.details if "kept" in row}
    assert "float (accuracy budget)" in kept.values(), kept  # the budget mixed the precisions
    pool = next(n for n in result.model.graph if n.op_type == "GlobalAveragePool")
    maxpool = next(n for n in result.model.graph if n.op_type == "MaxPool")
    assert kept.get(pool.name) == "float (slower in int8 after the budget)" and maxpool.name not in kept, kept
    said = "after the budget: 2 node(s) slowed in int8 by float neighbours; 1 kept float of op types that hold the "
    assert any(n.startswith(said) and "(GlobalAveragePool 1;" in n for n in record.notes), record.notes
    assert _runs_float(pool) and not _runs_float(maxpool)  # the MaxPool still reads its input dequantized


def _runs_float(node) -> bool:
    """Whether ``node`` reads a float tensor (no DequantizeLinear before its data input)."""
    source = node.inputs[0].producer()
    return source is None or source.op_type != "DequantizeLinear"


def test_a_budget_only_all_float_meets_declines() -> None:
    # a feature-map output: the metric is output agreement, which any quantized tensor lowers
    model = parse(
        NET.replace("float[N, 4] y", "float[N, 4, 4, 4] y").replace(
            "    p = GlobalAveragePool(c2)\n    y = Flatten(p)", "    y = Relu(c2)"
        ),
        w1=_W1,
        w2=_W2,
    )
    context = Context(dataset=RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0))
    record, result = _run("quantize:max_drop=0.0;eval_samples=32", context, model)
    assert record.status == "unchanged"
    assert any("max_drop=0.0" in s for s in record.skipped)
    assert "output agreement" in " ".join(record.notes)
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph)


def test_a_zero_db_budget_is_a_budget() -> None:
    # max_db_loss=0 once read as "no budget" (a truthiness test): the model came out all int8, unscored
    context = Context(dataset=RandomDataset(Runner(parse(NET, w1=_W1, w2=_W2).SerializeToString()).inputs, 32,
                                            dims={}, seed=0))  # fmt: skip
    record, result = _run("quantize:max_db_loss=0;eval_samples=32", context)
    assert any(n.startswith("all int8:") and "(max_db_loss 0)" in n for n in record.notes)  # the budget scored it
    kept = [row for row in record.details if row.get("kept") == "float (accuracy budget)"]
    every_float = any("compute kept float on every node" in n for n in record.notes)
    assert kept or every_float  # all int8 loses more than 0 dB: something kept float compute
    assert not kept or any(n.startswith("kept ") and "for the budget" in n for n in record.notes)
    assert not every_float or not any(n.op_type == "QuantizeLinear" for n in result.model.graph)


def test_layers_kept_float_for_max_db_loss_still_store_their_weights_int8(mobilenet) -> None:
    # the max_db_loss yardstick is the weights-only int8 model: a layer kept float for it keeps int8 storage
    # (a max_drop budget, measured against float, keeps exact weights: the test above)
    model, data = mobilenet
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    spec = "lossless,equalize,quantize:target=avx2;max_db_loss=6;eval_samples=128"  # 7-bit weights on every x86
    record, result = _run(spec, Context(dataset=dataset), model)
    assert record.status == "applied"
    kept = {row["node"] for row in record.details if row.get("kept") == "float (accuracy budget)"}
    assert kept, record.notes
    convs = [n for n in result.model.graph if n.name in kept and n.op_type == "Conv"]
    assert convs
    for node in convs:
        decode = node.inputs[1].producer()
        assert decode is not None and decode.op_type == "Mul"
        cast = decode.inputs[0].producer()
        assert cast.op_type == "Cast" and cast.inputs[0].const_value.dtype.name == "INT8"
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph)  # the rest computes in int8


def _all_int8_reading_drop(notes: list[str]) -> float:
    line = next(n for n in notes if n.startswith("all int8: ") and "max_reading_drop" in n)
    return float(line.split()[2])


def test_max_reading_drop_judges_int8_compute_by_the_task_reading_beyond_weights_only(mobilenet) -> None:
    # the int8 recipe's pair: with the user's data and a classifier's output the task reading judges, and
    # max_db_loss=0 (which would keep every node float) does not
    model, data = mobilenet
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    spec = "lossless,quantize:target=avx2;max_db_loss=0;max_reading_drop=0.02;eval_samples=128"
    record, result = _run(spec, Context(dataset=dataset), model)
    assert record.status == "applied", record.skipped
    assert not any("(max_db_loss" in n for n in record.notes), record.notes
    assert _all_int8_reading_drop(record.notes) > 0.02  # all int8 misses it: layers are kept float for it
    kept_note = next(n for n in record.notes if n.startswith("kept ") and "for the budget" in n)
    assert "top-1 agreement lost beyond weights-only int8" in kept_note
    assert "at 95% confidence" in kept_note
    assert float(kept_note.split(" at most ")[1].split()[0]) <= 0.02
    kept = {row["node"] for row in record.details if row.get("kept") == "float (accuracy budget)"}
    assert kept and any(n.op_type == "QuantizeLinear" for n in result.model.graph)
    for node in (n for n in result.model.graph if n.name in kept and n.op_type == "Conv"):
        assert node.inputs[1].producer().op_type == "Mul"  # weights still stored int8: the yardstick has them


def test_the_budget_scores_samples_calibration_did_not_fit_when_the_data_has_them(mobilenet) -> None:
    model, data = mobilenet  # 128 samples
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    spec = "lossless,quantize:target=avx2;max_db_loss=0;max_reading_drop=0.02;samples=32;eval_samples=64"
    record, _ = _run(spec, Context(dataset=dataset), model)
    line = next(n for n in record.notes if n.startswith("all int8: "))
    assert "on samples 32..95" in line and "at 95% confidence" in line, line
    assert not any("calibration fitted" in n for n in record.notes)
    spec = "lossless,quantize:target=avx2;max_db_loss=0;max_reading_drop=0.02;samples=96;eval_samples=64"
    record, _ = _run(spec, Context(dataset=dataset), model)
    line = next(n for n in record.notes if n.startswith("all int8: "))
    assert "on samples 0..63" in line, line
    assert "the budget scores samples calibration fitted: --data has 128, 160 would leave it 64 unseen ones" in (
        record.notes
    )


def test_max_reading_drop_leaves_judging_to_max_db_loss_where_no_task_is_read(mobilenet) -> None:
    model, data = mobilenet
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    spec = "lossless,quantize:target=avx2;max_db_loss=100;max_reading_drop=0;eval_samples=32"
    for context, why in (
        (Context(dataset=dataset, metric="values"), "the outputs read as output agreement, not a task"),
        (Context(), "the run has no --data"),
    ):
        record, _ = _run(spec, context, model)
        said = " ".join(record.notes)
        assert f"max_reading_drop does not judge: {why}" in said and "max_db_loss does" in said
        assert any(n.startswith("all int8:") and "(max_db_loss 100)" in n for n in record.notes)


def test_max_drop_and_a_budget_beyond_weights_only_are_not_given_together() -> None:
    from onnxopt.passes.quantize.config import QuantizeConfig

    with pytest.raises(ValueError, match="not both kinds"):
        QuantizeConfig(max_drop=0.01, max_reading_drop=0.01)
    with pytest.raises(ValueError, match="max_reading_drop must be in"):
        QuantizeConfig(max_reading_drop=1.5)


def test_max_db_loss_ranks_layers_against_the_weights_only_model_and_sees_the_head(mobilenet) -> None:
    # the ranking's yardstick is the budget's own (int8 weights decoded to float, float activations), and the
    # graph output, where only the classifier's error shows, is one of the layers it ranks
    model, data = mobilenet
    dataset = open_dataset(str(data), Runner(model.SerializeToString()).inputs, seed=0)
    decoded, tensors = [], []

    class Watched(Context):
        def layer_errors(self, reference, candidate, limit=32):
            # looked at now: the pass later quantizes its float model in place
            weights = [n.inputs[1].producer() for n in reference.graph if n.op_type == "Conv"]
            decoded.append(bool(weights) and all(w is not None and w.op_type == "Mul" for w in weights))
            report = super().layer_errors(reference, candidate, limit)
            tensors.append([layer.tensor for layer in report.layers])
            return report

    spec = "lossless,equalize,quantize:target=avx2;max_db_loss=6;eval_samples=128"
    record, _ = _run(spec, Watched(dataset=dataset), model)
    assert record.status == "applied" and decoded, record.notes
    assert decoded == [True]  # the weights-only model, not the float one
    assert model.graph.output[0].name in tensors[0]


def test_conversions_left_running_are_charged_to_the_int8_nodes_they_serve() -> None:
    """The per-node profile charges an int8 node with the QuantizeLinear / DequantizeLinear kernels onnxruntime
    runs on their own around it: a DequantizeLinear to its readers, a QuantizeLinear to its producer."""
    from onnxopt.passes.quantize.search import conversion_costs

    model = io.from_proto(
        parse(
            """<ir_version: 8, opset_import: ["": 13]>
            g (float[1, 4] x) => (float[1, 4] y) <float s = {0.1}, uint8 z = {128}> {
                q = QuantizeLinear(x, s, z)
                d = DequantizeLinear(q, s, z)
                a = Sigmoid(d)
                b = Relu(d)
                q2 = QuantizeLinear(a, s, z)
                d2 = DequantizeLinear(q2, s, z)
                y = Add(d2, b)
            }"""
        )
    )
    for i, node in enumerate(model.graph):
        node.name = f"{node.op_type}_{i}"
    times = {"QuantizeLinear_0": 3.0, "DequantizeLinear_1": 4.0, "QuantizeLinear_4": 5.0, "Sigmoid_2": 7.0}
    charged = conversion_costs(model, NodeProfile(times, {}), {"Sigmoid_2", "Relu_3", "Add_6"})
    assert charged == {"Sigmoid_2": 2.0 + 5.0, "Relu_3": 2.0}, charged


def test_with_profiles_the_budget_ranks_layers_by_error_per_microsecond_given_up() -> None:
    """Where the speed search profiled both models, the budget ranks layers by the error they add per µs of int8
    speed they (and the neighbours they take float) give up: here the stem, whose upstream is the exact input and
    so always adds the most error, is scripted to cost 5 ms more in float, and it is not the first kept float."""

    class CostlyStem(ScriptedContext):
        def _times(self, model) -> dict[str, float]:
            times = super()._times(model)
            stem = next(n for n in model.graph if n.op_type == "Conv")
            if times[stem.name] == 10.0:  # runs float
                times[stem.name] = 5000.0
            return times

    model = _chain()
    dataset = RandomDataset(Runner(model.SerializeToString()).inputs, 32, dims={}, seed=0)
    budget = "max_db_loss=1;eval_samples=32"
    by_error, plain = _run(f"quantize:{budget}", CostlyStem({}, dataset=dataset), model)
    profiled, _ = _run(f"quantize:fallback=profile;budget_order=error;{budget}", CostlyStem({}, dataset=dataset), model)
    by_cost, _ = _run(f"quantize:fallback=profile;{budget}", CostlyStem({}, dataset=dataset), model)
    stem = next(n.name for n in plain.model.graph if n.op_type == "Conv")  # float there: the pipeline's name
    assert stem in {row.get("node") for row in by_error.details}, by_error.details
    first = {}
    for label, record in (("error", by_error), ("profiled", profiled), ("cost", by_cost)):
        kept = [row["node"] for row in record.details if row.get("kept") == "float (accuracy budget)"]
        assert kept, record.notes
        first[label] = kept[0]
    assert first["error"] == first["profiled"] == stem  # by error alone (asked for, or without profiles)
    assert first["cost"] != stem, by_cost.details
    assert any("(ranked by error added per µs of int8 speed given up)" in n for n in by_cost.notes), by_cost.notes
    assert any("(ranked by error added)" in n for n in by_error.notes), by_error.notes
