"""low-rank: a large head factored to the data's subspace, its best candidates rescored exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import ops, parse, run

from onnxopt.api import optimize
from onnxopt.inspection import count_macs
from onnxopt.passes.low_rank import LowRankConfig

K, N, SUBSPACE = 64, 2048, 12


def _features(n: int, seed: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Inputs that live (up to a little noise) in a fixed SUBSPACE-dimensional subspace of R^K, as a real
    head's features do: the data-aware fit can find it, the weight's own SVD cannot."""
    basis = np.random.default_rng(7).normal(size=(SUBSPACE, K))
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, *shape, SUBSPACE))
    return (z @ basis + 0.01 * rng.normal(size=(n, *shape, K))).astype(np.float32)


def _head(tmp_path: Path, *, matmul: bool = False) -> Path:
    rng = np.random.default_rng(0)
    if matmul:
        model = parse(
            f"""<ir_version: 8, opset_import: ["": 13]>
            m (float[B, 3, {K}] x) => (float[B, 3, {N}] y) {{ y = MatMul(x, w) }}""",
            w=rng.normal(size=(K, N)).astype(np.float32),
        )
    else:
        model = parse(
            f"""<ir_version: 8, opset_import: ["": 13]>
            m (float[B, {K}] x) => (float[B, {N}] y) {{ y = Gemm<transB=1>(x, w, b) }}""",
            w=rng.normal(size=(N, K)).astype(np.float32),
            b=rng.normal(size=N).astype(np.float32),
        )
    path = tmp_path / ("matmul.onnx" if matmul else "gemm.onnx")
    onnx.save(model, path)
    return path


def _data(tmp_path: Path, n: int = 256, shape: tuple[int, ...] = ()) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, x=_features(n, seed=1, shape=shape))
    return path


def _factored(tmp_path: Path, spec: str, *, matmul: bool = False) -> tuple[Path, Path, object]:
    source = _head(tmp_path, matmul=matmul)
    out = tmp_path / "out.onnx"
    result = optimize(source, out, passes=spec, data=str(_data(tmp_path, shape=(3,) if matmul else ())))
    return source, out, result


def _record(result) -> object:
    (record,) = [r for r in result.pipeline.records if r.name == "low-rank"]
    return record


def test_data_aware_rank_reproduces_the_layer_on_held_out_inputs_where_plain_svd_cannot(tmp_path) -> None:
    source, out, _ = _factored(tmp_path, f"low-rank:rank={SUBSPACE};rescore=0")
    held = _features(64, seed=2)
    (want,), (got,) = run(onnx.load(source), {"x": held}), run(onnx.load(out), {"x": held})
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert error < 0.01
    weight = onnx.numpy_helper.to_array(onnx.load(source).graph.initializer[0]).T  # K x N
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    plain = held @ (u[:, :SUBSPACE] * s[:SUBSPACE]) @ vt[:SUBSPACE] + (want - held @ weight)
    assert np.linalg.norm(plain - want) / np.linalg.norm(want) > 0.3  # the yardstick this test beats
    assert "TopK" not in ops(onnx.load(out))


def test_rescored_candidates_are_exact_and_the_argmax_holds_on_held_out_inputs(tmp_path) -> None:
    source, out, result = _factored(tmp_path, "low-rank:rescore=8")
    (detail,) = _record(result).details
    assert detail["rank"] <= SUBSPACE * 2 and detail["argmax_kept"] >= 0.999
    model = onnx.load(out)
    assert {"TopK", "Gather", "ScatterElements"} <= set(ops(model))
    assert [o.name for o in model.graph.output] == ["y"]
    held = _features(128, seed=3)
    (want,), (got,) = run(onnx.load(source), {"x": held}), run(model, {"x": held})
    assert got.shape == want.shape
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    top = np.argsort(-got, axis=1)[:, :8]  # the largest entries are the rescored ones: they carry exact values
    exact = np.isclose(np.take_along_axis(got, top, 1), np.take_along_axis(want, top, 1), atol=1e-3)
    assert exact[:, 0].all() and exact.mean() >= 0.95  # (an approximate tail entry may edge past the 8th)
    assert not np.isclose(got, want, atol=1e-3).all()  # the tail is approximate: the check above can fail
    shape = {"x": (1, K)}
    assert count_macs(ir.load(str(out)), shape)[0] < 0.5 * count_macs(ir.load(str(source)), shape)[0]


def test_a_matmul_over_a_sequence_is_factored_per_position(tmp_path) -> None:
    source, out, result = _factored(tmp_path, "low-rank:rescore=8", matmul=True)
    assert _record(result).counts.get("layers factored") == 1
    held = _features(32, seed=4, shape=(3,))
    (want,), (got,) = run(onnx.load(source), {"x": held}), run(onnx.load(out), {"x": held})
    assert got.shape == (32, 3, N)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.99


def test_declines_what_it_cannot_keep_and_leaves_small_layers_alone(tmp_path) -> None:
    source = _head(tmp_path)
    rng = np.random.default_rng(5)
    data = tmp_path / "noise.npz"
    np.savez(data, x=rng.normal(size=(64, K)).astype(np.float32))  # full-rank inputs: no small rank keeps them
    out = tmp_path / "out.onnx"
    result = optimize(source, out, passes="low-rank:max_ratio=0.45;rescore=0", data=str(data))
    record = _record(result)
    assert not record.counts.get("layers factored")
    assert any("no rank within 45%" in reason for reason in record.skipped)
    result = optimize(source, out, passes=f"low-rank:min_outputs={N + 1}", data=str(_data(tmp_path)))
    assert not _record(result).counts.get("layers factored") and not _record(result).skipped


def test_the_same_data_gives_the_same_bytes(tmp_path) -> None:
    source, data = _head(tmp_path), _data(tmp_path)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    optimize(source, a, passes="low-rank", data=str(data))
    optimize(source, b, passes="low-rank", data=str(data))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "wrong",
    [
        {"agreement": 0.0},
        {"agreement": 1.5},
        {"max_ratio": 1.0},
        {"rank": -1},
        {"samples": 4},
        {"convs": -1},
        {"conv_agreement": 0.0},
        {"conv_max_ratio": 1.0},
    ],
)
def test_impossible_parameters_are_refused(wrong: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LowRankConfig(**wrong)


def test_a_scalar_bias_and_a_singular_gram_matrix_are_handled(tmp_path) -> None:
    """A Gemm bias shaped [1, 1] broadcasts over the outputs; inputs that are all zero (with ridge 0) leave
    nothing to factor: declined by name, not a crash."""
    rng = np.random.default_rng(0)
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        m (float[B, {K}] x) => (float[B, {N}] y) {{ y = Gemm<transB=1>(x, w, b) }}""",
        w=rng.normal(size=(N, K)).astype(np.float32),
        b=np.full((1, 1), 0.5, np.float32),
    )
    source, out = tmp_path / "scalar.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    result = optimize(source, out, passes="low-rank", data=str(_data(tmp_path)))
    assert _record(result).counts.get("layers factored") == 1
    held = _features(64, seed=6)
    (want,), (got,) = run(onnx.load(source), {"x": held}), run(onnx.load(out), {"x": held})
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    zeros = tmp_path / "zeros.npz"
    np.savez(zeros, x=np.zeros((64, K), np.float32))
    result = optimize(source, out, passes="low-rank:ridge=0", data=str(zeros))
    assert any("cannot be factored" in reason for reason in _record(result).skipped)


def _cnn(tmp_path: Path, rank: int | None) -> Path:
    """Conv(4->16) Relu Conv(16->32, 3x3) Relu GlobalAveragePool Gemm(32->10); the second Conv's weight has
    exactly ``rank`` (None: full rank)."""
    rng = np.random.default_rng(3)
    w2 = rng.normal(size=(32, 16 * 9))
    if rank is not None:
        w2 = rng.normal(size=(32, rank)) @ rng.normal(size=(rank, 16 * 9)) / np.sqrt(rank)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[B, 4, 12, 12] x) => (float[B, 10] y) {
            a = Conv<pads=[1, 1, 1, 1]>(x, w1, b1)
            ra = Relu(a)
            c = Conv<pads=[1, 1, 1, 1]>(ra, w2, b2)
            rc = Relu(c)
            g = GlobalAveragePool(rc)
            f = Flatten(g)
            y = Gemm<transB=1>(f, w3, b3)
        }""",
        w1=rng.normal(size=(16, 4, 3, 3)).astype(np.float32),
        b1=rng.normal(size=16).astype(np.float32),
        w2=(w2.reshape(32, 16, 3, 3) / 4).astype(np.float32),
        b2=rng.normal(size=32).astype(np.float32),
        w3=rng.normal(size=(10, 32)).astype(np.float32),
        b3=rng.normal(size=10).astype(np.float32),
    )
    path = tmp_path / f"cnn{rank}.onnx"
    onnx.save(model, path)
    return path


def _images(tmp_path: Path, n: int, seed: int) -> Path:
    path = tmp_path / f"images{seed}.npz"
    np.savez(path, x=np.random.default_rng(seed).normal(size=(n, 4, 12, 12)).astype(np.float32))
    return path


def test_a_low_rank_conv_becomes_a_thin_conv_and_a_1x1_conv(tmp_path) -> None:
    """The largest Conv, whose weight has rank 8, is factored at rank 8 (the smallest multiple of 8 that keeps
    every held-back top-1): fewer MACs, the same outputs on held-out data up to float rounding."""
    source, out = _cnn(tmp_path, rank=8), tmp_path / "out.onnx"
    result = optimize(source, out, passes="low-rank:convs=1", data=str(_images(tmp_path, 128, seed=1)))
    (record,) = [r for r in result.pipeline.records if r.name == "low-rank"]
    assert record.counts.get("convs factored") == 1
    (detail,) = [d for d in record.details if "top1_kept" in d]
    assert detail["rank"] == 8 and detail["top1_kept"] == 1.0
    model = onnx.load(out)
    assert [n.op_type for n in model.graph.node].count("Conv") == 3
    shapes = {"x": (1, 4, 12, 12)}
    assert count_macs(ir.load(str(out)), shapes)[0] < 0.5 * count_macs(ir.load(str(source)), shapes)[0]
    held = np.random.default_rng(9).normal(size=(64, 4, 12, 12)).astype(np.float32)
    (want,), (got,) = run(onnx.load(source), {"x": held}), run(model, {"x": held})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert [o.name for o in model.graph.output] == ["y"]


def test_a_full_rank_conv_is_declined_by_name_and_convs_default_off(tmp_path) -> None:
    source, out = _cnn(tmp_path, rank=None), tmp_path / "out.onnx"
    data = str(_images(tmp_path, 128, seed=1))
    result = optimize(source, out, passes="low-rank:convs=2;conv_agreement=1.0", data=data)
    (record,) = [r for r in result.pipeline.records if r.name == "low-rank"]
    assert not record.counts.get("convs factored")
    assert any("no rank within 75%" in reason and "unchanged" in reason for reason in record.skipped)
    result = optimize(source, out, passes="low-rank", data=data)
    (record,) = [r for r in result.pipeline.records if r.name == "low-rank"]
    assert not record.counts.get("convs factored") and not record.skipped


def test_conv_factoring_is_reproducible(tmp_path) -> None:
    source, data = _cnn(tmp_path, rank=8), str(_images(tmp_path, 64, seed=2))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    optimize(source, a, passes="low-rank:convs=2", data=data)
    optimize(source, b, passes="low-rank:convs=2", data=data)
    assert a.read_bytes() == b.read_bytes()
