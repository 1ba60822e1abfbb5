"""Pipeline: guard catches wrong rewrites and rolls back; records; opset upgrade."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
from helpers import BUNDLED, parse

from onnxopt import io
from onnxopt.optimizer import Context, Pipeline
from onnxopt.passes import FoldBatchNormPass, RemoveUnusedPass
from onnxopt.passes.base import OptPass, PassLog


class ScaleFirstWeightPass(OptPass):
    """Deliberately wrong 'lossless' pass: doubles the first Conv weight."""

    name = "test-scale-weight"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        conv = next(n for n in model.graph if n.op_type == "Conv")
        weight = conv.inputs[1]
        weight.const_value = ir.tensor(weight.const_value.numpy() * 2, name=weight.name)
        log.count("weights scaled")


class CrashingPass(OptPass):
    """A pass with a bug: raises halfway after removing a node."""

    name = "test-crash"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        model.graph.remove(next(n for n in model.graph if n.op_type == "Relu"), safe=False)
        raise RuntimeError("boom")


class NeedsOpset13Pass(OptPass):
    """Touches nothing but declares opset 13."""

    name = "test-needs-13"
    min_opset: ClassVar[int | None] = 13

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        pass


def _bundled() -> ir.Model:
    return io.load(BUNDLED / "model.onnx")


def test_wrong_lossless_rewrite_is_rolled_back_and_run_continues() -> None:
    result = Pipeline([ScaleFirstWeightPass(), FoldBatchNormPass()]).run(_bundled(), Context(guard_samples=4))
    bad, fold = result.records
    assert bad.status == "rolled back"
    assert "drifted" in bad.notes[0]
    assert fold.status == "applied"
    assert result.max_drift <= 1e-4
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph}
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    original = next(n for n in _bundled().graph if n.op_type == "Conv")
    np.testing.assert_array_equal(conv.inputs[1].const_value.numpy(), original.inputs[1].const_value.numpy())


def test_crashing_pass_is_rolled_back_with_reason() -> None:
    model = _bundled()
    nodes = len(list(model.graph))
    result = Pipeline([CrashingPass(), RemoveUnusedPass()]).run(model, Context(guard_samples=2))
    assert result.records[0].status == "rolled back"
    assert "RuntimeError: boom" in result.records[0].notes[0]
    assert len(list(result.model.graph)) == nodes
    assert result.max_drift == 0.0


def test_records_carry_stats_and_timing() -> None:
    result = Pipeline([FoldBatchNormPass()]).run(_bundled(), Context(guard_samples=2))
    (record,) = result.records
    assert record.status == "applied" and record.seconds > 0
    assert record.before.nodes == 23 and record.after.parameters > 0
    assert 0 < record.max_drift < 1e-5


def test_pass_needing_newer_opset_upgrades_and_says_so() -> None:
    model = io.from_proto(
        parse(
            """<ir_version: 7, opset_import: ["": 11]>
            g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }"""
        )
    )
    result = Pipeline([NeedsOpset13Pass()]).run(model, Context())
    assert result.records[0].notes == ["opset upgraded 11 -> 13"]
    assert result.records[0].status == "applied"
    assert io.opset_version(result.model) == 13
    assert np.isfinite(result.max_drift)


class RenameFirstNodePass(OptPass):
    """A lossless change that touches no number: renames the first node."""

    name = "test-rename"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        node = next(iter(model.graph))
        node.name = f"{node.name}_renamed"
        log.count("renamed")


def _counting_guard(monkeypatch) -> list[int]:
    calls: list[int] = []
    guard = Pipeline._guard

    def counted(*args, **kwargs):
        calls.append(1)
        return guard(*args, **kwargs)

    monkeypatch.setattr(Pipeline, "_guard", staticmethod(counted))
    return calls


def test_lossless_passes_in_a_row_are_verified_by_one_guard_run(monkeypatch) -> None:
    calls = _counting_guard(monkeypatch)
    passes = [FoldBatchNormPass(), RemoveUnusedPass(), RenameFirstNodePass()]
    result = Pipeline(passes).run(_bundled(), Context(guard_samples=2))
    assert [r.status for r in result.records] == ["applied", "applied", "applied"]
    assert len(calls) == 1
    fold, _, rename = result.records
    assert fold.max_drift == rename.max_drift == result.max_drift and 0 < result.max_drift < 1e-5


def test_a_failing_pass_inside_a_verified_group_is_found_and_alone_rolled_back(monkeypatch) -> None:
    calls = _counting_guard(monkeypatch)
    passes = [FoldBatchNormPass(), ScaleFirstWeightPass(), CrashingPass(), RenameFirstNodePass()]
    result = Pipeline(passes).run(_bundled(), Context(guard_samples=2))
    assert [r.status for r in result.records] == ["applied", "rolled back", "rolled back", "applied"]
    assert "drifted" in result.records[1].notes[0] and "boom" in result.records[2].notes[0]
    assert len(calls) == 3  # the group never reached its guard (a pass raised); then fold, scale, rename alone
    assert result.max_drift < 1e-5
    assert any(n.name.endswith("_renamed") for n in result.model.graph)
