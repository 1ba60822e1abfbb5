"""prune-magnitude: exact sparsity per layer or globally, N:M on the input-channel axis, protection, filters."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BUNDLED, apply, parse
from onnx import numpy_helper

from onnxopt.errors import RecipeError
from onnxopt.optimizer.recipe import build_passes, parse_spec
from onnxopt.passes.prune_magnitude import PruneMagnitudeConfig, PruneMagnitudePass


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _three_layers(scales=(1.0, 1.0, 1.0), seed: int = 0):
    """Conv(8->8) -> Conv(8->8) -> MatMul(8->8) head, weights scaled per layer."""
    rng = np.random.default_rng(seed)
    return parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 8, 5, 5] x) => (float[N, 8] y) {
            a = Conv<pads=[1,1,1,1]>(x, wa)
            b = Conv<pads=[1,1,1,1]>(a, wb)
            p = GlobalAveragePool(b)
            f = Flatten(p)
            y = MatMul(f, wc)
        }""",
        wa=(rng.normal(0, 1, (8, 8, 3, 3)) * scales[0]).astype(np.float32),
        wb=(rng.normal(0, 1, (8, 8, 3, 3)) * scales[1]).astype(np.float32),
        wc=(rng.normal(0, 1, (8, 8)) * scales[2]).astype(np.float32),
    )


def _zeros(a: np.ndarray) -> float:
    return float(np.mean(a == 0))


def test_per_layer_sparsity_is_exact_and_keeps_the_largest() -> None:
    model = _three_layers()
    cfg = PruneMagnitudeConfig(sparsity=0.6, protect_first=False, protect_last=False)
    out, outcome = apply(model, PruneMagnitudePass(cfg))
    before, after = _weights(model), _weights(out)
    for name in ("wa", "wb", "wc"):
        k = int(np.floor(0.6 * before[name].size))
        assert int((after[name] == 0).sum()) == k
        kept = after[name] != 0
        assert np.abs(before[name][kept]).min() >= np.abs(before[name][~kept]).max()  # the smallest went
        assert np.array_equal(after[name][kept], before[name][kept])
    assert outcome.counts["layers pruned"] == 3


def test_first_and_last_layers_are_protected_by_default() -> None:
    model = _three_layers()
    out, outcome = apply(model, PruneMagnitudePass(PruneMagnitudeConfig(sparsity=0.5)))
    after = _weights(out)
    assert _zeros(after["wa"]) == 0 and _zeros(after["wc"]) == 0 and _zeros(after["wb"]) == 0.5
    assert sum("protected" in s for s in outcome.skipped) == 2


def test_global_scope_and_normalized_importance() -> None:
    """A layer of small weights is emptied by a raw global threshold, but not by a normalized one."""
    model = _three_layers(scales=(1.0, 0.01, 1.0))
    raw = PruneMagnitudeConfig(sparsity=0.3, scope="global", protect_first=False, protect_last=False)
    out, _ = apply(model, PruneMagnitudePass(raw))
    after = _weights(out)
    total = sum(a.size for a in after.values())
    assert sum(int((a == 0).sum()) for a in after.values()) == int(np.floor(0.3 * total))
    assert int((after["wb"] == 0).sum()) >= 0.95 * np.floor(0.3 * total)  # the small layer took nearly all
    normalized = PruneMagnitudeConfig(
        sparsity=0.3, scope="global", importance="l2", protect_first=False, protect_last=False
    )
    out, _ = apply(model, PruneMagnitudePass(normalized))
    assert 0.1 < _zeros(_weights(out)["wb"]) < 0.5


@pytest.mark.parametrize("trans_b", [0, 1])
def test_two_of_four_along_input_channels(trans_b: int) -> None:
    rng = np.random.default_rng(5)
    g = rng.normal(0, 1, (5, 8) if trans_b else (8, 5)).astype(np.float32)
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 8, 4, 4] x) => (float[N, 5] y) {{
            a = Conv(x, w)
            p = GlobalAveragePool(a)
            f = Flatten(p)
            y = Gemm<transB={trans_b}>(f, g)
        }}""",
        w=rng.normal(0, 1, (8, 8, 1, 1)).astype(np.float32),
        g=g,
    )
    cfg = PruneMagnitudeConfig(pattern="2:4", protect_first=False, protect_last=False)
    out, _ = apply(model, PruneMagnitudePass(cfg))
    after = _weights(out)
    conv_groups = np.moveaxis(after["w"], 1, -1).reshape(-1, 4)  # Conv: input channels on axis 1
    gemm_groups = (after["g"] if trans_b else after["g"].T).reshape(-1, 4)  # Gemm: K is the input axis
    for groups in (conv_groups, gemm_groups):
        assert np.all((groups != 0).sum(axis=1) == 2)
    original = np.moveaxis(_weights(model)["w"], 1, -1).reshape(-1, 4)
    kept = np.sort(np.abs(original), axis=1)[:, 2:]
    assert np.allclose(np.sort(np.abs(conv_groups), axis=1)[:, 2:], kept)  # the two largest of each group


def test_n_m_declines_indivisible_channels() -> None:
    model = _three_layers()
    _, outcome = apply(model, PruneMagnitudePass(PruneMagnitudeConfig(pattern="3:5")))
    assert any("not a multiple of 5" in s for s in outcome.skipped)


@pytest.mark.parametrize(
    "spec",
    [
        "prune-magnitude:sparsity=1.0",
        "prune-magnitude:scope=world",
        "prune-magnitude:pattern=4:2",
        "prune-magnitude:pattern=two",
        "prune-magnitude:importance=l3",
        "prune-magnitude:include=(",
    ],
)
def test_impossible_parameters_are_recipe_errors(spec: str) -> None:
    with pytest.raises(RecipeError):
        build_passes(parse_spec(spec))


def test_sparsity_zero_changes_nothing() -> None:
    model = _three_layers()
    out, outcome = apply(model, PruneMagnitudePass(PruneMagnitudeConfig(sparsity=0.0)))
    assert not outcome.modified
    assert all(np.array_equal(a, _weights(model)[k]) for k, a in _weights(out).items())


def test_bundled_model_through_the_pipeline(tmp_path) -> None:
    from onnxopt.api import optimize

    result = optimize(
        BUNDLED / "model.onnx",
        tmp_path / "p.onnx",
        passes="prune-magnitude:pattern=2:4",
        data=str(BUNDLED / "eval.npz"),
    )
    (record,) = result.pipeline.records
    assert record.status == "applied"
    assert [d["sparsity_after"] for d in record.details] == [0.5, 0.5]
    assert result.comparison.candidate_accuracy > 0.85
