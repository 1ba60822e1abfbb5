"""clip-weights: clamps (never zeroes), per layer or per output channel, four ways to choose h."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BUNDLED, apply, parse, run
from onnx import numpy_helper

from onnxopt.errors import RecipeError
from onnxopt.optimizer.recipe import build_passes, parse_spec
from onnxopt.passes.clip_weights import ClipWeightsConfig, ClipWeightsPass, _mse_bounds


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _conv_gemm(w: np.ndarray, g: np.ndarray, trans_b: int = 1):
    return parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        m (float[N, {w.shape[1]}, 6, 6] x) => (float[N, {g.shape[0] if trans_b else g.shape[1]}] y) {{
            c = Conv(x, w)
            p = GlobalAveragePool(c)
            f = Flatten(p)
            y = Gemm<transB={trans_b}>(f, g)
        }}""",
        w=w,
        g=g,
    )


def test_threshold_clamps_and_never_zeroes() -> None:
    rng = np.random.default_rng(0)
    w, g = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), rng.normal(0, 1, (5, 4)).astype(np.float32)
    out, outcome = apply(_conv_gemm(w, g), ClipWeightsPass(ClipWeightsConfig(mode="threshold", value=0.5)))
    new = _weights(out)
    for name, old in (("w", w), ("g", g)):
        assert np.abs(new[name]).max() <= 0.5
        inside = np.abs(old) <= 0.5
        assert np.array_equal(new[name][inside], old[inside])  # small weights untouched
        assert np.array_equal(np.sign(new[name]), np.sign(old))  # nothing set to zero
    assert outcome.counts["weights clipped"] == int((np.abs(w) > 0.5).sum() + (np.abs(g) > 0.5).sum())
    assert {d["layer"] for d in outcome.details} == {"Conv(w)", "Gemm(g)"}


def test_per_channel_bounds_follow_each_layout() -> None:
    """Channel k's weights are k+1 times larger: per-channel percentiles must scale with k on the right axis."""
    rng = np.random.default_rng(1)
    scale_conv = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1, 1)
    w = (rng.uniform(-1, 1, (4, 3, 3, 3)) * scale_conv).astype(np.float32)
    for trans_b in (0, 1):
        shape, axis = ((5, 4), 0) if trans_b else ((4, 5), 1)
        scale_gemm = np.arange(1, 6, dtype=np.float32).reshape((-1, 1) if trans_b else (1, -1))
        g = (rng.uniform(-1, 1, shape) * scale_gemm).astype(np.float32)
        cfg = ClipWeightsConfig(mode="percentile", value=50.0, granularity="channel")
        out, _ = apply(_conv_gemm(w, g, trans_b), ClipWeightsPass(cfg))
        new = _weights(out)
        conv_peaks = np.abs(new["w"]).reshape(4, -1).max(axis=1)
        gemm_peaks = np.abs(np.moveaxis(new["g"], axis, 0)).reshape(5, -1).max(axis=1)
        for peaks, old, ax in ((conv_peaks, w, 0), (gemm_peaks, g, axis)):
            rows = np.abs(np.moveaxis(old, ax, 0)).reshape(len(peaks), -1)
            assert np.allclose(peaks, np.percentile(rows, 50, axis=1), rtol=1e-5)


def test_layer_percentile_clips_that_fraction() -> None:
    rng = np.random.default_rng(2)
    w, g = rng.normal(0, 1, (16, 8, 3, 3)).astype(np.float32), rng.normal(0, 1, (5, 16)).astype(np.float32)
    cfg = ClipWeightsConfig(mode="percentile", value=99.0, granularity="layer", ops="Conv")
    _, outcome = apply(_conv_gemm(w, g), ClipWeightsPass(cfg))
    (row,) = outcome.details
    assert row["clipped_fraction"] == pytest.approx(0.01, abs=0.002)
    assert 0 < row["norm_change"] < 0.05


def test_mse_bound_beats_no_clipping_for_heavy_tails() -> None:
    rng = np.random.default_rng(3)
    a = np.abs(rng.standard_t(2, (8, 4096)))
    h = _mse_bounds(a, 4)

    def mse(bound: np.ndarray) -> np.ndarray:
        step = bound[:, None] / 7
        return np.mean((np.minimum(np.round(a / step), 7) * step - a) ** 2, axis=1)

    assert np.all(h < a.max(axis=1))
    assert np.all(mse(h) < 0.9 * mse(a.max(axis=1)))  # clipping pays
    fine = np.stack([mse(a.max(axis=1) * f) for f in np.linspace(0.005, 1.0, 1000)])
    assert np.all(mse(h) <= 1.02 * fine.min(axis=0))  # and h is (close to) the best bound


def test_filters_select_layers() -> None:
    rng = np.random.default_rng(4)
    w, g = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), rng.normal(0, 1, (5, 4)).astype(np.float32)
    model = _conv_gemm(w, g)
    model.graph.node[0].name, model.graph.node[3].name = "stem/conv", "head/fc"
    cfg = ClipWeightsConfig(mode="threshold", value=0.1, exclude="^head/")
    out, outcome = apply(model, ClipWeightsPass(cfg))
    assert np.array_equal(_weights(out)["g"], g) and np.abs(_weights(out)["w"]).max() <= 0.1
    assert [d["layer"] for d in outcome.details] == ["stem/conv"]


@pytest.mark.parametrize(
    "spec",
    [
        "clip-weights:mode=threshold",
        "clip-weights:mode=wild",
        "clip-weights:mode=mse;value=3.5",
        "clip-weights:ops=Relu",
        "clip-weights:granularity=row",
    ],
)
def test_impossible_parameters_are_recipe_errors(spec: str) -> None:
    with pytest.raises(RecipeError):
        build_passes(parse_spec(spec))


def test_bundled_model_keeps_its_accuracy_with_mse_clipping(tmp_path) -> None:
    from onnxopt.api import optimize

    result = optimize(
        BUNDLED / "model.onnx", tmp_path / "c.onnx", passes="clip-weights", data=str(BUNDLED / "eval.npz")
    )
    (record,) = result.pipeline.records
    assert record.status == "applied" and record.details
    assert abs(result.comparison.candidate_accuracy - result.comparison.reference_accuracy) <= 0.005
    x = np.load(BUNDLED / "eval.npz")["image"][:4]
    assert run(__import__("onnx").load(str(tmp_path / "c.onnx")), {"image": x})[0].shape == (4, 10)
