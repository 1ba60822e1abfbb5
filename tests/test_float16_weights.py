"""float16-weights: float32 weights stored as float16 behind a Cast that onnxruntime folds away at load -- half
the file, float32 compute, names kept; declines what float16 cannot hold."""

from __future__ import annotations

import numpy as np
import onnx
from helpers import BUNDLED, apply, fused_ops, parse, run
from onnx import TensorProto

from onnxopt.api import optimize
from onnxopt.passes.float16_weights import Float16WeightsConfig, StoreWeightsFloat16Pass


def _model(w: np.ndarray, g: np.ndarray):
    return parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        m (float[N, {w.shape[1]}, 6, 6] x) => (float[N, {g.shape[0]}] y) {{
            c = Conv(x, w)
            p = GlobalAveragePool(c)
            f = Flatten(p)
            y = Gemm<transB=1>(f, g)
        }}""",
        w=w,
        g=g,
    )


def test_weights_are_stored_as_float16_read_under_their_names_and_folded_back_by_onnxruntime(tmp_path) -> None:
    rng = np.random.default_rng(0)
    w, g = rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.3, (10, 16)).astype(np.float32)
    model = _model(w, g)
    out, outcome = apply(model, StoreWeightsFloat16Pass())
    stored = {t.name: t for t in out.graph.initializer}
    assert set(stored) == {"w_fp16", "g_fp16"} and {t.data_type for t in stored.values()} == {TensorProto.FLOAT16}
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert sorted(n.output[0] for n in casts) == ["g", "w"]  # the Casts write the weights' own names
    assert [n.input[1] for n in out.graph.node if n.op_type in ("Conv", "Gemm")] == ["w", "g"]
    assert outcome.counts == {"weights stored as float16": 2, "bytes saved": 2 * (w.size + g.size)}
    x = rng.normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
    [before], [after] = run(model, {"x": x}), run(out, {"x": x})
    assert 0 < np.abs(after - before).max() <= 1e-3 * np.abs(before).max()  # changed, by float16 rounding only
    expected = run(_model(w.astype(np.float16).astype(np.float32), g.astype(np.float16).astype(np.float32)), {"x": x})
    np.testing.assert_array_equal(after, expected[0])
    assert "Cast" not in fused_ops(out, tmp_path)  # what onnxruntime runs: the float32 graph, no decoding per call


def test_what_float16_cannot_hold_is_declined_and_nothing_to_store_leaves_the_model_as_it_came() -> None:
    rng = np.random.default_rng(1)
    big = rng.normal(0, 1, (16, 3, 3, 3)).astype(np.float32)
    big[0, 0, 0, 0] = 1e5  # beyond float16
    tiny = rng.normal(0, 1e-6, (10, 16)).astype(np.float32)  # float16 subnormals: most of each value lost
    out, outcome = apply(_model(big, tiny), StoreWeightsFloat16Pass())
    assert not outcome.modified and [n.op_type for n in out.graph.node] == [
        "Conv",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]
    reasons = dict(d.split(": ", 1) for d in outcome.skipped)
    assert reasons["w"].startswith("|w| reaches 1e+05, beyond float16's 65504")
    assert reasons["g"].startswith("float16 would change it by") and "max_error 0.001" in reasons["g"]
    assert reasons["model"] == "no weight stored (none of at least 128 elements that float16 holds)"
    clean = rng.normal(0, 1, (16, 3, 3, 3)).astype(np.float32)
    small = _model(clean[:2], clean[:4, :2, 0, 0])  # 54 and 8 elements: under min_elements
    assert not apply(small, StoreWeightsFloat16Pass())[1].modified
    assert apply(small, StoreWeightsFloat16Pass(Float16WeightsConfig(min_elements=8)))[1].modified


def test_an_initializer_that_is_a_graph_input_is_declined() -> None:
    rng = np.random.default_rng(2)
    model = _model(rng.normal(0, 1, (16, 3, 3, 3)).astype(np.float32), rng.normal(0, 1, (10, 16)).astype(np.float32))
    graph_input = onnx.helper.make_tensor_value_info("g", TensorProto.FLOAT, [10, 16])
    model.graph.input.append(graph_input)  # overridable: its value is the caller's
    out, outcome = apply(model, StoreWeightsFloat16Pass())
    assert dict(d.split(": ", 1) for d in outcome.skipped)["g"] == "a graph input (its value may be overridden)"
    assert {t.name for t in out.graph.initializer} == {"w_fp16", "g"}


def test_the_bundled_cnn_is_half_the_file_and_rebuilt_byte_for_byte(tmp_path) -> None:
    source = BUNDLED / "model.onnx"
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (first, second):
        optimize(source, path, passes="lossless,float16-weights")
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_size < 0.55 * source.stat().st_size
