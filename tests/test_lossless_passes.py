"""Lossless cleanup passes, each checked numerically in onnxruntime."""

from __future__ import annotations

import numpy as np
from helpers import apply, assert_same_outputs, ops, parse, rng

from onnxopt.passes import (
    DeduplicateInitializersPass,
    EliminateIdentityPass,
    FoldConstantsPass,
    RemoveInitializerInputsPass,
    RemoveUnusedPass,
    TopologicalSortPass,
)


def x(*shape: int) -> np.ndarray:
    return rng(3).standard_normal(shape).astype(np.float32)


def test_constant_of_shape_weights_and_static_shape_chains_fold() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x) => (float[2, 4] y) {
            w = ConstantOfShape <value: tensor = float[1] {0.5}> (wshape)
            t = Transpose(w)
            s = Shape(x)
            r = Reshape(x, s)
            y = MatMul(r, t)
        }""",
        wshape=np.array([4, 3], np.int64),
    )
    folded, outcome = apply(model, FoldConstantsPass())
    out, _ = apply(folded, RemoveUnusedPass())
    assert ops(out) == ["MatMul"], ops(out)
    assert outcome.modified
    assert_same_outputs(model, out, {"x": x(2, 3)})


def test_identity_and_inference_dropout_are_removed() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x) => (float[2, 3] y) {
            a = Identity(x)
            b = Relu(a)
            c = Dropout(b)
            y = Identity(c)
        }"""
    )
    out, outcome = apply(model, EliminateIdentityPass())
    assert ops(out) == ["Relu"]
    assert [o.name for o in out.graph.output] == ["y"]
    assert outcome.counts["dropouts removed"] == 1
    assert_same_outputs(model, out, {"x": x(2, 3)})


def test_dropout_with_used_mask_is_kept() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x) => (float[2, 3] y, bool[2, 3] m) { y, m = Dropout(x) }"""
    )
    out, outcome = apply(model, EliminateIdentityPass())
    assert ops(out) == ["Dropout"]
    assert "mask" in outcome.skipped[0]


def test_duplicate_initializers_merge_and_unused_go() -> None:
    w = x(3, 3)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x) => (float[2, 3] y) {
            a = MatMul(x, w1)
            b = MatMul(x, w2)
            dead = Relu(b)
            y = Add(a, b)
        }""",
        w1=w,
        w2=w.copy(),
        unused=x(5),
    )
    deduped, outcome = apply(model, DeduplicateInitializersPass())
    assert outcome.counts == {"initializers merged": 1}
    cleaned, outcome = apply(deduped, RemoveUnusedPass())
    assert ops(cleaned) == ["MatMul", "MatMul", "Add"]
    assert {i.name for i in cleaned.graph.initializer} == {"w1"}
    assert_same_outputs(model, cleaned, {"x": x(2, 3)})


def test_topological_sort_orders_producers_first() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x) => (float[2, 3] y) { a = Relu(x)  y = Neg(a) }"""
    )
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))  # invalid order on purpose
    out, outcome = apply(model, TopologicalSortPass())
    assert ops(out) == ["Relu", "Neg"]
    assert outcome.counts["nodes moved"] == 2


def test_initializer_inputs_become_constants() -> None:
    model = parse(
        """<ir_version: 3, opset_import: ["": 9]>
        g (float[2, 3] x, float[3, 3] w) => (float[2, 3] y) { y = MatMul(x, w) }""",
        w=x(3, 3),
    )
    out, outcome = apply(model, RemoveInitializerInputsPass())
    assert outcome.counts["inputs made constant"] == 1
    assert [i.name for i in out.graph.input] == ["x"]
    assert out.ir_version == 4
    assert_same_outputs(model, out, {"x": x(2, 3)})


def test_models_with_subgraphs_survive_the_lossless_recipe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    import onnxopt

    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3] x, bool c) => (float[2, 3] y) {
            a = Identity(x)
            y = If(c) <
                then_branch = t () => (float[2, 3] o) { o = Relu(a) },
                else_branch = e () => (float[2, 3] o) { o = Neg(a) }
            >
        }"""
    )
    src = tmp_path / "if.onnx"
    onnx.save(model, str(src))
    result = onnxopt.optimize(src, tmp_path / "out.onnx", recipe="lossless")
    assert all(r.status != "rolled back" for r in result.pipeline.records)
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in out.graph.node] == ["If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in out.graph.node[0].attribute}
    assert branches == {"then_branch": ["Relu"], "else_branch": ["Neg"]}
