"""Sparse storage: SparseTensorProto written where smaller, read back (onnx_ir drops them), outputs identical."""

from __future__ import annotations

import numpy as np
import onnx
from helpers import BUNDLED, run

from onnxopt import io
from onnxopt.api import optimize
from onnxopt.io.sparse_storage import densify, sparsify

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"


def test_pruned_model_sparse_file_is_smaller_with_identical_outputs(tmp_path) -> None:
    spec = "prune-magnitude:sparsity=0.8"
    dense = optimize(MODEL, tmp_path / "dense.onnx", passes=spec, data="random:4")
    sparse = optimize(MODEL, tmp_path / "sparse.onnx", passes=spec, data="random:4", storage="sparse")
    stored = onnx.load(str(tmp_path / "sparse.onnx"))
    # onnx's *full* check types sparse initializers as sparse tensors, which Conv does not take; the
    # structural check and onnxruntime (which densifies them at load) accept the file.
    onnx.checker.check_model(stored)
    assert len(stored.graph.sparse_initializer) == 2  # the two unprotected layers
    # 80 % zeros, INT64 indices: a float stored sparse costs 12 bytes, so about 0.2 * 12 / 4 = 60 % of dense
    big = 225_000 * 4
    saved = dense.output_file_bytes - sparse.output_file_bytes
    assert 0.3 * big < saved < 0.45 * big
    x = np.load(EVAL)["image"][:16]
    a = run(onnx.load(str(tmp_path / "dense.onnx")), {"image": x})[0]
    b = run(stored, {"image": x})[0]
    assert np.array_equal(a, b)


def test_sparse_input_is_densified_not_dropped(tmp_path) -> None:
    proto = onnx.load(str(MODEL))
    weight = next(t for t in proto.graph.initializer if t.name.endswith("dense_1/Cast/ReadVariableOp:0"))
    array = onnx.numpy_helper.to_array(weight).copy()
    array[np.abs(array) < np.quantile(np.abs(array), 0.9)] = 0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    assert sparsify(proto)
    path = tmp_path / "sparse_in.onnx"
    onnx.save(proto, str(path))
    result = optimize(path, tmp_path / "out.onnx", recipe="lossless", data=str(EVAL))
    assert result.comparison.max_rel < 1e-5
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert not out.graph.sparse_initializer and any(t.name == weight.name for t in out.graph.initializer)


def test_densify_round_trip() -> None:
    proto = onnx.load(str(MODEL))
    before = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for t in proto.graph.initializer:
        a = onnx.numpy_helper.to_array(t).copy()
        if a.size >= 2048:
            a[np.abs(a) < np.median(np.abs(a)) * 2] = 0
            t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    zeroed = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    converted = sparsify(proto)
    assert converted and all(s < d for _, d, s in converted)
    assert densify(proto) == len(converted)
    after = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], zeroed[k]) for k in after)


def test_unknown_storage_is_refused(tmp_path) -> None:
    import pytest

    from onnxopt.errors import OutputError

    with pytest.raises(OutputError, match="storage must be"):
        io.save(onnx.load(str(MODEL)), tmp_path / "x.onnx", storage="zip")


def test_packed_storage_meets_a_third_of_the_file_with_identical_outputs(tmp_path) -> None:
    import collections

    import onnxruntime as ort

    spec = "prune-magnitude:sparsity=0.8"
    optimize(MODEL, tmp_path / "dense.onnx", passes=spec, data="random:4")
    packed = optimize(MODEL, tmp_path / "packed.onnx", passes=spec, data="random:4", storage="packed")
    stored = onnx.load(str(tmp_path / "packed.onnx"))
    onnx.checker.check_model(stored, full_check=True)  # standard ops only: the full check passes
    # measured: 229,163 of 906,451 bytes (25 %); the bar is the 35 %
    assert packed.output_file_bytes <= 0.35 * packed.input_file_bytes
    x = np.load(EVAL)["image"][:16]
    outputs = {}
    for name in ("dense", "packed"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"ort_{name}.onnx")
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        outputs[name] = session.run(None, {"image": x})[0]
    assert np.array_equal(outputs["dense"], outputs["packed"])
    # onnxruntime folds the unpacking subgraph at load: the graph it runs is the dense model's
    ops = {
        name: collections.Counter(n.op_type for n in onnx.load(str(tmp_path / f"ort_{name}.onnx")).graph.node)
        for name in ("dense", "packed")
    }
    assert ops["packed"] == ops["dense"]
    # onnxopt reads a packed file back: its lossless recipe unpacks it (fold-constants) along the way
    again = optimize(tmp_path / "packed.onnx", tmp_path / "again.onnx", data="random:4")
    assert again.comparison.max_rel < 1e-5
    assert "CumSum" not in {n.op_type for n in onnx.load(str(tmp_path / "again.onnx")).graph.node}


def test_packed_storage_refuses_old_opsets() -> None:
    import pytest

    from onnxopt.io.packed_storage import pack

    proto = onnx.load(str(MODEL))
    proto.opset_import[0].version = 10
    with pytest.raises(ValueError, match="opset 11"):
        pack(proto)
