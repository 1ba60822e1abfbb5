"""A graph exported for one sample is rewritten to carry a batch only where onnxruntime confirms it."""

from __future__ import annotations

import numpy as np
from helpers import parse

from onnxopt.distill.batch_layout import batched, confirmed_batched, fixed_batch_one
from onnxopt.runtime import Runner


def _head(reshape_input: str = "c", shape: tuple[int, ...] = (1, 6, -1), perm: str = "", out: str = "1, 100, 6"):
    """A YOLOX-like head exported with batch 1: Conv, Reshape to a constant shape starting with 1, Transpose."""
    g = np.random.default_rng(4)
    pre = f"p = Transpose<perm={perm}>(c)\n        " if perm else ""
    body = f"""<ir_version: 8, opset_import: ["": 17]>
    g (float[1, 3, 10, 10] x) => (float[{out}] output) {{
        c = Conv(x, w)
        {pre}r = Reshape({reshape_input}, shape)
        output = Transpose<perm=[0, 2, 1]>(r)
    }}"""
    return parse(body, w=g.normal(0, 1, (6, 3, 1, 1)).astype(np.float32), shape=np.array(shape, np.int64))


def _feeds(n: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(0, 1, (n, 3, 10, 10)).astype(np.float32)}


def test_a_batch_of_one_sample_graph_comes_out_one_sample_per_row() -> None:
    model = _head()
    assert fixed_batch_one(model)
    rewritten = confirmed_batched(model, _feeds(2))
    assert rewritten is not None and rewritten is not model and not fixed_batch_one(rewritten)
    feeds = _feeds(5)
    together = Runner(rewritten).run(feeds)[0]
    alone = np.concatenate([Runner(model).run({"x": feeds["x"][i : i + 1]})[0] for i in range(5)])
    assert together.shape == (5, 100, 6)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    # the original is untouched, and the rewrite is the same bytes each time
    assert list(model.graph.node[1].input)[1] == "shape"
    assert batched(model).SerializeToString() == batched(model).SerializeToString()


def test_a_leading_one_that_is_not_the_batch_is_not_rewritten() -> None:
    """After a Transpose moving the batch off axis 0, copying axis 0 would mix samples: onnxruntime's check
    says no, and the caller keeps the graph (read one sample at a time)."""
    model = _head("p", (1, -1, 6), perm="[1, 0, 2, 3]", out="1, 6, 100")
    assert confirmed_batched(model, _feeds(2)) is None


def test_a_graph_that_already_takes_a_batch_is_kept_as_it_is() -> None:
    model = _head()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert confirmed_batched(model, _feeds(2)) is model
