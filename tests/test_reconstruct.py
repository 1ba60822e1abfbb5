"""reconstruct: the least-squares refit recovers exact weights when it can, and most of what pruning lost."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, parse
from onnx import numpy_helper

from onnxopt import io
from onnxopt.data import NpzDataset
from onnxopt.optimizer import Context, Pipeline
from onnxopt.optimizer.recipe import build_passes, parse_spec
from onnxopt.runtime import Runner

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, spec: str, dataset=None):
    result = Pipeline(build_passes(parse_spec(spec))).run(io.from_proto(model), Context(dataset=dataset))
    return io.to_proto(result.model), result


def _layer_model() -> onnx.ModelProto:
    """Conv with pads, strides and dilations, then Flatten into Gemm (transB=1) and MatMul."""
    return parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 9, 9] x) => (float[N, 4] y) {
            a = Conv<pads=[1,2,1,0], strides=[2,1], dilations=[1,2]>(x, w, b)
            r = Relu(a)
            p = GlobalAveragePool(r)
            f = Flatten(p)
            g = Gemm<transB=1>(f, wg, bg)
            y = MatMul(g, wm)
        }""",
        w=RNG.normal(0, 0.5, (5, 3, 3, 2)).astype(np.float32),
        b=RNG.normal(0, 0.1, 5).astype(np.float32),
        wg=RNG.normal(0, 0.5, (6, 5)).astype(np.float32),
        bg=RNG.normal(0, 0.1, 6).astype(np.float32),
        wm=RNG.normal(0, 0.5, (6, 4)).astype(np.float32),
    )


def test_refit_of_unchanged_layers_finds_their_own_weights() -> None:
    """Inputs equal the original's, so the exact least-squares solution is the original weights (im2col check)."""
    model = _layer_model()
    out, result = _run(model, "reconstruct:layers=all;ridge=0;samples=64;positions=32")
    (record,) = result.records
    assert all(d["error_before"] < 1e-6 for d in record.details)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("w", "b", "wg", "bg", "wm"):
        assert np.allclose(before[name], after[name], atol=1e-3), name


def test_refit_recovers_what_pruning_lost(tmp_path) -> None:
    digits = BUNDLED / "model.onnx"
    data = NpzDataset(BUNDLED / "eval.npz", Runner(str(digits)).inputs)
    model = onnx.load(str(digits))
    pruned, _ = _run(model, "fold-bn,prune-channels:ratio=0.5;exclude=dense", data)
    rebuilt, result = _run(model, "fold-bn,prune-channels:ratio=0.5;exclude=dense,reconstruct", data)
    record = result.records[-1]
    assert record.status == "applied"
    assert all(d["error_after"] < d["error_before"] for d in record.details if d["status"] == "refit")
    with np.load(BUNDLED / "eval.npz") as archive:
        x, labels = archive["image"], archive["labels"]

    def accuracy(m: onnx.ModelProto) -> float:
        return float((Runner(m.SerializeToString()).run({"image": x})[0].argmax(1) == labels).mean())

    assert accuracy(pruned) < 0.7 < 0.93 < accuracy(rebuilt)


def test_no_refit_is_kept_when_it_is_no_better() -> None:
    model = _layer_model()
    _, result = _run(model, "reconstruct:layers=all;ridge=10;samples=16")
    (record,) = result.records
    assert all(d["status"].startswith("kept") for d in record.details)  # a heavy ridge only makes things worse
    assert record.status == "unchanged"


@pytest.mark.parametrize("spec", ["reconstruct:layers=some", "reconstruct:samples=0", "reconstruct:ridge=-1"])
def test_impossible_parameters(spec: str) -> None:
    from onnxopt.errors import RecipeError

    with pytest.raises(RecipeError):
        build_passes(parse_spec(spec))
