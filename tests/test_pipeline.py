"""Pipeline: guard catches wrong rewrites and rolls back; records; opset upgrade."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
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


class NeedsOpset13AndRenamesPass(NeedsOpset13Pass):
    """Declares opset 13 and changes something (a node's name)."""

    name = "test-needs-13-renames"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        next(iter(model.graph)).name = "renamed"
        log.count("renamed")


class DeclinesAfterEditingPass(OptPass):
    """A buggy decline: adds a node, then reports that it changed nothing."""

    name = "test-declines-after-editing"

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        relu = next(n for n in model.graph if n.op_type == "Relu")
        model.graph.append(ir.node("Relu", [relu.outputs[0]]))
        log.skip("model", "nothing to do")


def _opset11_relu() -> ir.Model:
    return io.from_proto(
        parse(
            """<ir_version: 7, opset_import: ["": 11]>
            g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }"""
        )
    )


def test_pass_needing_newer_opset_upgrades_and_says_so() -> None:
    result = Pipeline([NeedsOpset13AndRenamesPass()]).run(_opset11_relu(), Context())
    assert result.records[0].notes == ["opset upgraded 11 -> 13"]
    assert result.records[0].status == "applied"
    assert io.opset_version(result.model) == 13
    assert np.isfinite(result.max_drift)


def test_a_pass_that_changes_nothing_leaves_the_model_at_its_own_opset() -> None:
    """Issue 33.5: the upgrade made for a pass that then declined is undone."""
    result = Pipeline([NeedsOpset13Pass(), RemoveUnusedPass()]).run(_opset11_relu(), Context())
    record = result.records[0]
    assert record.status == "unchanged"
    assert record.notes == ["opset upgraded 11 -> 13 for this pass, undone: it changed nothing"]
    assert io.opset_version(result.model) == 11
    assert record.after == record.before


def test_a_pass_that_declines_after_editing_is_undone() -> None:
    """Issue 33.5: a declined pass leaves the model as it came, even when its code edited the graph first."""
    result = Pipeline([DeclinesAfterEditingPass()]).run(_opset11_relu(), Context())
    assert result.records[0].status == "unchanged"
    assert [n.op_type for n in result.model.graph] == ["Relu"]
    assert result.records[0].after.nodes == 1


def test_the_structural_guard_ignores_the_names_of_unknown_dims(tmp_path) -> None:
    """Without data that can run the model, a lossless pass is checked structurally; shape inference naming an
    unknown output dim (``unk__0``) where the input file left it unnamed is not a changed output (issue 33.5)."""
    proto = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, T] x) => (float[1, ?, 4] y)
        <int64[3] shape = {1, -1, 4}, float[4, 4] w = {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
            dead = Relu(x)
            r = Reshape(x, shape)
            y = MatMul(r, w)
        }"""
    )
    onnx.save(proto, tmp_path / "m.onnx")
    source = io.read_model(tmp_path / "m.onnx")  # the file as the user gave it: the output's dim has no name
    result = Pipeline([RemoveUnusedPass()]).run(io.to_model(source), Context(), source=source)
    assert not result.outputs_compared  # random inputs of width 1 cannot be reshaped to [1, -1, 4]
    assert result.records[0].status == "applied", result.records[0].notes
    assert "Relu" not in [n.op_type for n in result.model.graph]


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


def test_a_declined_quantize_leaves_the_file_as_it_came_and_claims_no_learning(tmp_path) -> None:
    """Issue 33.5: int8 on an opset-11 model that random inputs cannot run: quantize declines, so the written
    model keeps opset 11 and its nodes (less the dead one lossless removes), and no note says quantize learned
    from random inputs."""
    from onnxopt.optimizer.run import OptimizeOptions, optimize_file

    proto = parse(
        """<ir_version: 7, opset_import: ["": 11]>
        g (float[1, T] x) => (float[1, 4] y) <int64[3] shape = {1, -1, 4}, int64[1] axes = {1}> {
            dead = Relu(x)
            r = Reshape(x, shape)
            y = ReduceSum<keepdims = 0, axes = [1]>(r)
        }"""
    )
    onnx.save(proto, tmp_path / "m.onnx")
    result = optimize_file(tmp_path / "m.onnx", tmp_path / "o.onnx", OptimizeOptions(recipe="int8"))
    written = onnx.load(tmp_path / "o.onnx")
    assert written.opset_import[0].version == 11
    assert [n.op_type for n in written.graph.node] == ["Reshape", "ReduceSum"]
    quantize = next(r for r in result.pipeline.records if r.name == "quantize")
    assert quantize.status == "unchanged" and quantize.after == quantize.before
    assert not any("learned from random inputs" in n for n in result.pipeline.notes)
    assert result.fell_back  # the int8 the user asked for did not happen: said, exit 3 in the CLI


def test_a_model_built_in_two_runs_has_the_bytes_of_one_run_of_the_same_passes(tmp_path) -> None:
    # tune builds a trial in stages; its rebuild is one run. Each run infers the shapes of the values the passes
    # created before it writes, so the factor outputs of low-rank are declared alike both ways.
    from helpers import file_digest

    from onnxopt.api import optimize

    data = str(BUNDLED / "train.npz")
    first, second = "lossless,low-rank:convs=2", "quantize:weights_only=true"
    staged = optimize(BUNDLED / "model.onnx", tmp_path / "stage1.onnx", passes=first, data=data)
    assert next(r for r in staged.pipeline.records if r.name == "low-rank").status == "applied"
    optimize(tmp_path / "stage1.onnx", tmp_path / "staged.onnx", passes=second, data=data)
    optimize(BUNDLED / "model.onnx", tmp_path / "one.onnx", passes=f"{first},{second}", data=data)
    assert file_digest(tmp_path / "staged.onnx") == file_digest(tmp_path / "one.onnx")
