"""prune-channels: dependency groups, slicing through every supported op, and the declines.

The exactness tests build models whose lowest-importance channels are *dead*
(zero filter, zero bias, BN scale and shift 0): removing them must leave the
outputs unchanged, which checks every slice -- residual groups, Concat
offsets, depthwise filters, NCHW and NHWC flattening, Gemm/MatMul inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, apply, assert_same_outputs, parse
from onnx import numpy_helper

from onnxopt.passes.prune_channels import PruneChannelsConfig, PruneChannelsPass

RNG = np.random.default_rng(0)


def _conv_weight(out_c: int, in_c: int, k: int = 3, dead: tuple[int, ...] = ()) -> np.ndarray:
    w = RNG.normal(0, 0.5, (out_c, in_c, k, k)).astype(np.float32)
    w[list(dead)] = 0
    return w


def _bias(c: int, dead: tuple[int, ...] = ()) -> np.ndarray:
    b = RNG.normal(0, 0.1, c).astype(np.float32)
    b[list(dead)] = 0
    return b


def _bn(c: int, dead: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    gamma, beta = RNG.uniform(0.5, 1.5, c).astype(np.float32), RNG.normal(0, 0.1, c).astype(np.float32)
    gamma[list(dead)], beta[list(dead)] = 0, 0
    return {"g": gamma, "be": beta, "mu": RNG.normal(0, 0.1, c).astype(np.float32), "var": np.ones(c, np.float32)}


def _feeds(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(0, 1, shape).astype(np.float32)}


def _channels_after(outcome) -> list[int]:
    return [d["channels_after"] for d in outcome.details if d["status"] == "pruned"]


def test_chain_with_bn_and_nchw_flatten_is_exact() -> None:
    dead = (1, 4)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 6, 6] x) => (float[N, 4] y) {
            a = Conv<pads=[1,1,1,1]>(x, w1, b1)
            n = BatchNormalization(a, g, be, mu, var)
            r = Relu(n)
            p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)
            f = Flatten(p)
            y = Gemm<transB=1>(f, w2, b2)
        }""",
        w1=_conv_weight(6, 3, dead=dead),
        b1=_bias(6, dead),
        **_bn(6, dead),
        w2=RNG.normal(0, 0.3, (4, 6 * 3 * 3)).astype(np.float32),
        b2=_bias(4),
    )
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.34)))
    assert _channels_after(outcome) == [4]
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert next(a for a in weights.values() if a.ndim == 2).shape == (4, 4 * 3 * 3)
    assert_same_outputs(model, out, _feeds((2, 3, 6, 6)))


def test_residual_add_couples_the_sources() -> None:
    dead = (0, 5)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
            a = Conv<pads=[1,1,1,1]>(x, wa, ba)
            r = Relu(a)
            b = Conv<pads=[1,1,1,1]>(r, wb, bb)
            s = Add(a, b)
            t = Relu(s)
            y = Conv(t, wc)
        }""",
        wa=_conv_weight(6, 3, dead=dead),
        ba=_bias(6, dead),
        wb=_conv_weight(6, 6, dead=dead),
        bb=_bias(6, dead),
        wc=_conv_weight(2, 6, k=1),
    )
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.34)))
    groups = [d for d in outcome.details if d["status"] == "pruned"]
    assert len(groups) == 1 and groups[0]["channels_after"] == 4 and "," in groups[0]["group"]  # one coupled group
    assert_same_outputs(model, out, _feeds((2, 3, 5, 5)))


def test_concat_offsets_and_depthwise() -> None:
    dead_a, dead_b = (2,), (0, 3)
    dw = RNG.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    dw_bias = RNG.normal(0, 0.1, 8).astype(np.float32)
    dw_bias[[2, 4 + 0, 4 + 3]] = 0  # dead channels stay zero through the depthwise conv
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
            a = Conv<pads=[1,1,1,1]>(x, wa, ba)
            b = Conv<pads=[1,1,1,1]>(x, wb, bb)
            c = Concat<axis=1>(a, b)
            d = Conv<group=8, pads=[1,1,1,1]>(c, dw, dwb)
            r = Relu(d)
            y = Conv(r, wc)
        }""",
        wa=_conv_weight(4, 3, dead=dead_a),
        ba=_bias(4, dead_a),
        wb=_conv_weight(4, 3, dead=dead_b),
        bb=_bias(4, dead_b),
        dw=dw,
        dwb=dw_bias,
        wc=_conv_weight(2, 8, k=1),
    )
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.25)))
    assert sorted(_channels_after(outcome)) == [3, 3]
    depthwise = next(n for n in out.graph.node if n.op_type == "Conv" and n.input[0] == "c")
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 6
    assert_same_outputs(model, out, _feeds((2, 3, 5, 5)))


def test_nhwc_flatten_into_matmul() -> None:
    """The digits model's head: MaxPool -> Transpose(NHWC) -> Reshape(computed target) -> MatMul."""
    dead = (1, 2)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 2, 4, 4] x) => (float[N, 3] y) {
            a = Conv<pads=[1,1,1,1]>(x, w1, b1)
            r = Relu(a)
            t = Transpose<perm=[0,2,3,1]>(r)
            s = Shape(t)
            n = Slice(s, zero, one, zero)
            shape = Concat<axis=0>(n, feat)
            f = Reshape(t, shape)
            y = MatMul(f, w2)
        }""",
        w1=_conv_weight(4, 2, dead=dead),
        b1=_bias(4, dead),
        zero=np.array([0], np.int64),
        one=np.array([1], np.int64),
        feat=np.array([64], np.int64),
        w2=RNG.normal(0, 0.3, (64, 3)).astype(np.float32),
    )
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.5)))
    assert _channels_after(outcome) == [2]
    assert "Shape" not in {n.op_type for n in out.graph.node}  # the computed target became [0, -1]
    assert_same_outputs(model, out, _feeds((3, 2, 4, 4)))


def test_declines_keep_groups_whole() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 18]>
        m (float[N, 4, 5, 5] x) => (float[N, 6, 5, 5] a, float[N, 2, 5, 5] g, float[N, 3, 5, 5] s1) {
            a = Conv<pads=[1,1,1,1]>(x, wa)
            b = Conv<pads=[1,1,1,1]>(x, wb)
            g = Conv<group=2>(b, wg)
            c = Conv<pads=[1,1,1,1]>(x, wc)
            s1, s2 = Split<axis=1, num_outputs=2>(c)
        }""",
        wa=_conv_weight(6, 4),
        wb=_conv_weight(4, 4),
        wg=_conv_weight(2, 2, k=1),
        wc=_conv_weight(6, 4),
    )
    _, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.5)))
    reasons = " | ".join(outcome.skipped)
    assert "graph output" in reasons and "Split" in reasons
    # b feeds a grouped Conv: pruned too, one channel from each of its two group blocks (4 -> 2)
    assert _channels_after(outcome) == [2]


def test_ratio_zero_is_the_identity() -> None:
    model = onnx.load(str(BUNDLED / "model.onnx"))
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.0)))
    assert not outcome.modified
    assert_same_outputs(model, out, {"image": RNG.random((2, 28, 28, 1), dtype=np.float32)}, rtol=0)


def test_bundled_model_half_the_channels(tmp_path) -> None:
    from onnxopt.api import optimize

    result = optimize(
        BUNDLED / "model.onnx", tmp_path / "p.onnx", passes="fold-bn,prune-channels:ratio=0.5", data="random:8"
    )
    record = result.pipeline.records[-1]
    assert record.status == "applied"
    assert [d["channels_after"] for d in record.details] == [16, 32, 64, 10]
    assert result.pipeline.final.parameters < 0.3 * result.pipeline.original.parameters


@pytest.mark.parametrize(
    "spec",
    ["prune-channels:ratio=1", "prune-channels:importance=x", "prune-channels:multiple=0", "prune-channels:exclude=("],
)
def test_impossible_parameters(spec: str) -> None:
    from onnxopt.errors import RecipeError
    from onnxopt.optimizer.recipe import build_passes, parse_spec

    with pytest.raises(RecipeError):
        build_passes(parse_spec(spec))


def test_activation_importance_finds_the_dead_channels() -> None:
    """Dead channels output exactly zero on any data, so activation importance prunes them and nothing changes."""
    from onnxopt import io
    from onnxopt.optimizer import Context, Pipeline
    from onnxopt.optimizer.recipe import build_passes, parse_spec

    dead = (0, 3)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
            a = Conv<pads=[1,1,1,1]>(x, w1, b1)
            r = Relu(a)
            y = Conv(r, w2)
        }""",
        w1=_conv_weight(6, 3, dead=dead),
        b1=_bias(6, dead),
        w2=_conv_weight(2, 6, k=1),
    )
    spec = "prune-channels:ratio=0.34;importance=activation;samples=16"
    result = Pipeline(build_passes(parse_spec(spec))).run(io.from_proto(model), Context())
    (record,) = result.records
    assert record.status == "applied" and record.details[0]["channels_after"] == 4
    assert result.max_drift < 1e-6


def test_thinet_removes_the_channels_the_next_layer_ignores() -> None:
    """Channels 1 and 4 are as strong as any (l1 and activation keep them) but the next Conv reads them with zero
    weights: ThiNet's reconstruction error finds that removing them changes nothing."""
    from onnxopt import io
    from onnxopt.optimizer import Context, Pipeline
    from onnxopt.optimizer.recipe import build_passes, parse_spec

    ignored = (1, 4)
    w1 = _conv_weight(6, 3)
    w1[list(ignored)] *= 3  # the strongest filters
    w2 = _conv_weight(2, 6, k=1)
    w2[:, list(ignored)] = 0
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
            a = Conv<pads=[1,1,1,1]>(x, w1, b1)
            r = Relu(a)
            y = Conv(r, w2)
        }""",
        w1=w1,
        b1=_bias(6),
        w2=w2,
    )
    drift = {}
    for importance in ("thinet", "l1"):
        spec = f"prune-channels:ratio=0.34;importance={importance};samples=16;positions=4"
        result = Pipeline(build_passes(parse_spec(spec))).run(io.from_proto(model), Context())
        (record,) = result.records
        assert record.status == "applied" and record.details[0]["channels_after"] == 4
        drift[importance] = result.max_drift
    assert drift["thinet"] < 1e-6 < drift["l1"]


def test_max_drop_picks_the_largest_ratio_within_the_budget(tmp_path) -> None:
    from onnxopt.api import optimize

    spec = "lossless,prune-channels:ratio=0.9;exclude=dense;max_drop=0.02;eval_samples=256,reconstruct"
    result = optimize(BUNDLED / "model.onnx", tmp_path / "p.onnx", passes=spec, data=str(BUNDLED / "eval.npz"))
    record = next(r for r in result.pipeline.records if r.name == "prune-channels")
    assert record.status == "applied"
    (note,) = [n for n in record.notes if n.startswith("max_drop=0.02")]
    chosen = float(note.split("ratio ")[1].split()[0])
    trials = {row["trial_ratio"]: row["drop"] for row in record.details if "trial_ratio" in row}
    assert 0 < chosen < 0.9 and len(trials) == 5 and trials[0.9] > 0.02
    nearest = min(trials, key=lambda ratio: abs(ratio - chosen))  # the note rounds to 3 decimals, the rows to 4
    assert abs(nearest - chosen) < 1e-3
    assert trials[nearest] <= 0.02  # the chosen ratio's trial (pruned, then reconstructed) met the budget
    assert all(drop > 0.02 for ratio, drop in trials.items() if ratio > nearest)


def test_an_unreachable_pruning_budget_declines(tmp_path) -> None:
    from onnxopt.api import optimize

    spec = "lossless,prune-channels:ratio=0.5;max_drop=0.0;refit=false;budget_steps=2"
    result = optimize(BUNDLED / "model.onnx", tmp_path / "p.onnx", passes=spec, data=str(BUNDLED / "eval.npz"))
    record = next(r for r in result.pipeline.records if r.name == "prune-channels")
    assert record.status == "unchanged" and any("keeps the accuracy drop within 0.0" in s for s in record.skipped)


def test_grouped_convolutions_lose_the_same_count_in_every_group() -> None:
    """A feeds a grouped Conv B (group 2) that is itself a source feeding a grouped Conv C: one dead channel per
    group block in A and in B is removed, every group keeps an equal share, and nothing changes."""
    a_dead, b_dead = (1, 6), (0, 4)  # A's blocks: 0-3, 4-7; B's blocks: 0-2, 3-5
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
            a = Conv<pads=[1,1,1,1]>(x, wa, ba)
            ra = Relu(a)
            b = Conv<pads=[1,1,1,1], group=2>(ra, wb, bb)
            rb = Relu(b)
            y = Conv<group=2>(rb, wc)
        }""",
        wa=_conv_weight(8, 4, dead=a_dead),
        ba=_bias(8, a_dead),
        wb=_conv_weight(6, 4, dead=b_dead),
        bb=_bias(6, b_dead),
        wc=_conv_weight(4, 3, k=1),
    )
    out, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.34)))
    assert _channels_after(outcome) == [6, 4]
    shapes = {t.name: list(t.dims) for t in out.graph.initializer}
    weights = {n.op_type + str(i): shapes[n.input[1]] for i, n in enumerate(out.graph.node) if n.op_type == "Conv"}
    assert list(weights.values()) == [[6, 4, 3, 3], [4, 3, 3, 3], [4, 2, 1, 1]]
    assert_same_outputs(model, out, _feeds((2, 4, 6, 6)), rtol=1e-6)


def test_grouped_convolution_over_concatenated_channels_is_declined() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        m (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
            a = Conv(x, wa)
            b = Conv(x, wb)
            c = Concat<axis=1>(a, b)
            y = Conv<group=2>(c, wc)
        }""",
        wa=_conv_weight(4, 4, k=1),
        wb=_conv_weight(4, 4, k=1),
        wc=_conv_weight(4, 4, k=1),
    )
    _, outcome = apply(model, PruneChannelsPass(PruneChannelsConfig(ratio=0.5)))
    assert not outcome.modified
    assert any("grouped convolution (group 2) over mixed channels" in s for s in outcome.skipped)


def test_a_collapsed_prune_is_caught_even_when_nothing_can_fine_tune_it(tmp_path, monkeypatch) -> None:
    """distill's max_drop still judges the pruned model when training cannot run (no TensorFlow here): on the
    same held-back samples, in onnxruntime alone -- the run falls back (exit 3) instead of passing it off."""
    from onnxopt.api import optimize
    from onnxopt.errors import OnnxoptError
    from onnxopt.passes import distill

    def no_tensorflow(*args, **kwargs):
        raise OnnxoptError("TensorFlow is not installed: pip install 'onnxopt[tf]'")

    monkeypatch.setattr(distill, "finetune", no_tensorflow)
    with np.load(BUNDLED / "eval.npz") as data:
        np.savez(tmp_path / "d.npz", image=data["image"][:300])  # no labels: agreement with the original
    spec = "prune-channels:ratio=0.9,distill:max_drop=0.01"
    result = optimize(BUNDLED / "model.onnx", tmp_path / "o.onnx", passes=spec, data=str(tmp_path / "d.npz"))
    record = next(r for r in result.pipeline.records if r.name == "distill")
    assert "TensorFlow is not installed" in " ".join(record.skipped)
    assert result.fell_back and any("untrained; agreement with the original" in f for f in result.fallbacks)
    kept = optimize(
        BUNDLED / "model.onnx", tmp_path / "k.onnx", passes="distill:max_drop=0.01", data=str(tmp_path / "d.npz")
    )
    assert not any("missed its budget" in f for f in kept.fallbacks)  # nothing pruned: the budget holds
