"""The speed cost of keeping nodes float, and the budget's order by error per µs (``float_cost``)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxopt.passes.quantize.float_cost import cascade, cheapest_first
from tests.helpers import parse


@pytest.fixture()
def chain() -> ir.Graph:
    """Two SiLU blocks on different resolutions: a big Conv ``big`` (SiLU ``sig``/``mul``) strided into a small
    Conv ``small`` (SiLU ``sig2``/``mul2``), then an Add with a skip from ``pool``."""
    w1 = np.ones((4, 3, 3, 3), np.float32)
    w2 = np.ones((4, 4, 3, 3), np.float32)
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[1, 3, 32, 32] x) => (float[1, 4, 16, 16] y) {
        c = Conv<pads=[1, 1, 1, 1]>(x, w1)
        s = Sigmoid(c)
        m = Mul(c, s)
        c2 = Conv<pads=[1, 1, 1, 1], strides=[2, 2]>(m, w2)
        s2 = Sigmoid(c2)
        m2 = Mul(c2, s2)
        p = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(m)
        y = Add(m2, p)
    }"""
    graph = ir.from_proto(parse(text, w1=w1, w2=w2)).graph
    for node, name in zip(graph, NODES, strict=True):
        node.name = name
    return graph


NODES = ("big", "sig", "mul", "small", "sig2", "mul2", "pool", "add")


def test_a_float_node_runs_its_producers_and_its_tensors_readers_float(chain: ir.Graph) -> None:
    spread = cascade(chain, NODES, NODES)
    assert spread["mul"] == {"mul", "big", "sig", "small", "pool"}  # reads c, s; writes m (read by small, pool)
    assert spread["sig2"] == {"sig2", "small", "mul2"}
    assert spread["add"] == {"add", "mul2", "pool"}


def test_the_cheaper_of_two_equally_harmful_nodes_goes_float_first(chain: ir.Graph) -> None:
    float_us = {"big": 1000.0, "small": 100.0, "pool": 10.0, "add": 5.0}
    int8_us = {"big": 300.0, "sig": 20.0, "mul": 20.0, "small": 60.0, "sig2": 5.0, "mul2": 5.0, "pool": 5.0}
    ranked = [("mul", 2.0), ("sig2", 2.0), ("add", 0.0)]
    order = cheapest_first(ranked, chain, NODES, float_us, int8_us)
    # sig2's cascade gives up (100 - 60) - 5 - 5 = 30 µs; mul's (1000 - 300) - 20 - 20 + (100 - 60) + (10 - 5) = 705
    assert [name for name, _ in order] == ["sig2", "mul", "add"]
    assert order[0] == ("sig2", 2.0)  # the errors travel with their nodes


def test_a_node_beside_one_already_float_is_cheaper(chain: ir.Graph) -> None:
    float_us = {"small": 1000.0, "pool": 200.0}
    int8_us = {"small": 100.0, "pool": 10.0}
    # Alone, mul2 gives up small's 900 µs and add only pool's 190, so add would come first. Once sig2 (which
    # runs small float too) is float, mul2 gives up nothing more and goes before add.
    ranked = [("sig2", 5.0), ("add", 0.95), ("mul2", 0.9)]
    order = [name for name, _ in cheapest_first(ranked, chain, NODES, float_us, int8_us)]
    assert order == ["sig2", "mul2", "add"]


def test_without_costs_the_order_is_the_errors(chain: ir.Graph) -> None:
    ranked = [("mul", 3.0), ("sig2", 2.0), ("pool", 1.0)]
    assert cheapest_first(ranked, chain, NODES, {}, {}) == ranked


def test_a_shared_constant_does_not_spread_float() -> None:
    # weights and constants are rounded per reader: a float Mul leaves the other reader of its constant int8
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[1, 4] x, float[1, 4] z) => (float[1, 4] y) {
        a = Mul(x, k)
        b = Mul(z, k)
        y = Add(a, b)
    }"""
    graph = ir.from_proto(parse(text, k=np.full((4,), 0.5, np.float32))).graph
    for node, name in zip(graph, ("first", "second", "add"), strict=True):
        node.name = name
    names = ["first", "second", "add"]
    assert cascade(graph, names, names) == {
        "first": {"first", "add"},
        "second": {"second", "add"},
        "add": {"add", "first", "second"},
    }


def test_nodes_beside_those_kept_float_before_the_budget_cost_nothing(chain: ir.Graph) -> None:
    float_us = {"big": 1000.0, "small": 100.0}
    int8_us = {"big": 100.0, "small": 90.0}
    ranked = [("sig", 2.0), ("sig2", 1.0)]
    # sig alone gives up big's 900 µs; with mul (which runs big float) kept float for speed, nothing
    assert [n for n, _ in cheapest_first(ranked, chain, NODES, float_us, int8_us)] == ["sig2", "sig"]
    quantized = [n for n in NODES if n != "mul"]
    assert [n for n, _ in cheapest_first(ranked, chain, quantized, float_us, int8_us, kept_float=["mul"])] == [
        "sig",
        "sig2",
    ]
