"""fold-bn and fold-affine: one test per case, each checked numerically in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import apply, assert_same_outputs, ops, parse, rng

from onnxopt.passes import FoldBatchNormPass, FoldChannelAffinePass


def bn_params(c: int, seed: int = 1, dtype: type = np.float32) -> dict[str, np.ndarray]:
    r = rng(seed)
    return {
        "gamma": r.uniform(0.5, 1.5, c).astype(dtype),
        "beta": r.normal(0, 0.5, c).astype(dtype),
        "mean": r.normal(0, 0.5, c).astype(dtype),
        "var": r.uniform(0.5, 2.0, c).astype(dtype),
    }


def image(*shape: int, seed: int = 2) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


BN = "BatchNormalization <epsilon: float = 0.001>"


def test_conv_bn_folds_into_conv() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 3, 8, 8] x) => (float[2, 4, 6, 6] y) {{
            c = Conv(x, w, b)
            y = {BN}(c, gamma, beta, mean, var)
        }}""",
        w=image(4, 3, 3, 3),
        b=image(4),
        **bn_params(4),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Conv"]
    assert outcome.counts == {"folded into Conv": 1}
    assert_same_outputs(model, out, {"x": image(2, 3, 8, 8)})


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_uses_transposed_weight_layout(group: int) -> None:
    # ConvTranspose weight is [C_in, C_out/group, k, k]; 4 in, 6 out.
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4, 5, 5] x) => (float[1, 6, 7, 7] y) {{
            c = ConvTranspose <group: int = {group}> (x, w)
            y = {BN}(c, gamma, beta, mean, var)
        }}""",
        w=image(4, 6 // group, 3, 3),
        **bn_params(6),
    )
    out, _ = apply(model, FoldBatchNormPass())
    assert ops(out) == ["ConvTranspose"]
    assert_same_outputs(model, out, {"x": image(1, 4, 5, 5)})


@pytest.mark.parametrize(("trans_b", "with_c"), [(0, True), (1, True), (0, False), (1, False)])
def test_gemm_bn(trans_b: int, with_c: bool) -> None:
    w = image(5, 6) if trans_b else image(6, 5)
    inputs = "x, w, c" if with_c else "x, w"
    extra = {"c": image(5)} if with_c else {}
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[3, 6] x) => (float[3, 5] y) {{
            h = Gemm <transB: int = {trans_b}, alpha: float = 0.5, beta: float = 2.0> ({inputs})
            y = {BN}(h, gamma, beta, mean, var)
        }}""",
        w=w,
        **extra,
        **bn_params(5),
    )
    out, _ = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Gemm"]
    assert_same_outputs(model, out, {"x": image(3, 6)})


@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_bn(with_bias: bool) -> None:
    body = "m = MatMul(x, w)\n h = Add(m, bias)" if with_bias else "h = MatMul(x, w)"
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[N, 6] x) => (float[N, 5] y) {{
            {body}
            y = {BN}(h, gamma, beta, mean, var)
        }}""",
        w=image(6, 5),
        bias=image(5),
        **bn_params(5),
    )
    out, _ = apply(model, FoldBatchNormPass())
    assert ops(out) == ["MatMul", "Add"]
    assert_same_outputs(model, out, {"x": image(4, 6)})


def test_matmul_bn_on_rank3_is_not_folded_into_weight() -> None:
    # BN's channel axis (1) is not MatMul's output-channel axis (last) here.
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 5, 6] x) => (float[2, 5, 5] y) {{
            h = MatMul(x, w)
            y = {BN}(h, gamma, beta, mean, var)
        }}""",
        w=image(6, 5),
        **bn_params(5),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["MatMul", "Mul", "Add"]
    assert outcome.counts == {"rewritten as Mul+Add": 1}
    assert_same_outputs(model, out, {"x": image(2, 5, 6)})


def test_bn_before_unpadded_conv_folds_forward() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4, 8, 8] x) => (float[1, 6, 6, 6] y) {{
            n = {BN}(x, gamma, beta, mean, var)
            y = Conv <group: int = 2> (n, w, b)
        }}""",
        w=image(6, 2, 3, 3),
        b=image(6),
        **bn_params(4),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Conv"]
    assert outcome.counts == {"folded into following Conv": 1}
    assert_same_outputs(model, out, {"x": image(1, 4, 8, 8)})


def test_bn_forward_through_maxpool_needs_positive_scale() -> None:
    text = f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4, 8, 8] x) => (float[1, 6, 2, 2] y) {{
            r = Relu(x)
            n = {BN}(r, gamma, beta, mean, var)
            p = MaxPool <kernel_shape: ints = [2, 2], strides: ints = [2, 2]> (n)
            y = Conv(p, w)
        }}"""
    positive = parse(text, w=image(6, 4, 3, 3), **bn_params(4))
    out, _ = apply(positive, FoldBatchNormPass())
    assert ops(out) == ["Relu", "MaxPool", "Conv"]
    assert_same_outputs(positive, out, {"x": image(1, 4, 8, 8)})

    params = bn_params(4)
    params["gamma"][1] = -0.7  # max(s x) != s max(x) for s < 0: must not move past the MaxPool
    negative = parse(text, w=image(6, 4, 3, 3), **params)
    out, _ = apply(negative, FoldBatchNormPass())
    assert ops(out) == ["Relu", "Mul", "Add", "MaxPool", "Conv"]
    assert_same_outputs(negative, out, {"x": image(1, 4, 8, 8)})


def test_bn_before_padded_conv_becomes_mul_add() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4, 8, 8] x) => (float[1, 6, 8, 8] y) {{
            n = {BN}(x, gamma, beta, mean, var)
            y = Conv <pads: ints = [1, 1, 1, 1]> (n, w)
        }}""",
        w=image(6, 4, 3, 3),
        **bn_params(4),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Mul", "Add", "Conv"]
    assert any("pads" in s for s in outcome.skipped) or outcome.counts == {"rewritten as Mul+Add": 1}
    assert_same_outputs(model, out, {"x": image(1, 4, 8, 8)})


def test_standalone_bn_becomes_mul_add_then_folds_into_conv() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 3, 6, 6] y) {{
            y = {BN}(x, gamma, beta, mean, var)
        }}""",
        **bn_params(3),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Mul", "Add"]
    assert outcome.counts == {"rewritten as Mul+Add": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_outputs(model, out, {"x": image(1, 3, 6, 6)})


def test_shared_weight_is_cloned_not_changed_under_the_other_user() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y, float[1, 4, 4, 4] z) {{
            a = Conv(x, w)
            y = {BN}(a, gamma, beta, mean, var)
            z = Conv(x, w)
        }}""",
        w=image(4, 3, 3, 3),
        **bn_params(4),
    )
    out, _ = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Conv", "Conv"]
    weights = {n.input[1] for n in out.graph.node}
    assert len(weights) == 2 and "w" in weights
    assert_same_outputs(model, out, {"x": image(1, 3, 6, 6)})


def test_producer_with_other_consumers_is_not_scaled() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y, float[1, 4, 4, 4] z) {{
            a = Conv(x, w)
            y = {BN}(a, gamma, beta, mean, var)
            z = Relu(a)
        }}""",
        w=image(4, 3, 3, 3),
        **bn_params(4),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Conv", "Mul", "Add", "Relu"]
    assert outcome.counts == {"rewritten as Mul+Add": 1}
    assert_same_outputs(model, out, {"x": image(1, 3, 6, 6)})


def test_training_mode_bn_is_declined() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 15]>
        g (float[2, 3, 4, 4] x) => (float[2, 3, 4, 4] y, float[3] rm, float[3] rv) {
            y, rm, rv = BatchNormalization <training_mode: int = 1> (x, gamma, beta, mean, var)
        }""",
        **bn_params(3),
    )
    out, outcome = apply(model, FoldBatchNormPass())
    assert ops(out) == ["BatchNormalization"]
    assert not outcome.modified
    assert "training_mode=1" in outcome.skipped[0]


def test_fp16_conv_bn_folds_in_higher_precision() -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float16[1, 3, 8, 8] x) => (float16[1, 4, 6, 6] y) {{
            c = Conv(x, w, b)
            y = {BN}(c, gamma, beta, mean, var)
        }}""",
        w=image(4, 3, 3, 3).astype(np.float16),
        b=image(4).astype(np.float16),
        **bn_params(4, dtype=np.float16),
    )
    out, _ = apply(model, FoldBatchNormPass())
    assert ops(out) == ["Conv"]
    assert out.graph.initializer[0].data_type == model.graph.initializer[0].data_type
    assert_same_outputs(model, out, {"x": image(1, 3, 8, 8).astype(np.float16)}, rtol=5e-3)


@pytest.mark.parametrize(
    ("op", "const_shape"),
    [("Mul", (1, 4, 1, 1)), ("Add", (4, 1, 1)), ("Sub", (4, 1, 1)), ("Div", (1, 4, 1, 1)), ("Mul", ())],
)
def test_per_channel_affine_after_conv_folds(op: str, const_shape: tuple[int, ...]) -> None:
    model = parse(
        f"""<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y) {{
            a = Conv(x, w, b)
            y = {op}(a, c)
        }}""",
        w=image(4, 3, 3, 3),
        b=image(4),
        c=rng(5).uniform(0.5, 1.5, const_shape).astype(np.float32),
    )
    out, outcome = apply(model, FoldChannelAffinePass())
    assert ops(out) == ["Conv"], outcome.skipped
    assert_same_outputs(model, out, {"x": image(1, 3, 6, 6)})


def test_keras_style_mul_add_after_gemm_folds() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[2, 6] x) => (float[2, 5] y) {
            a = Gemm(x, w, b)
            m = Mul(a, s)
            y = Add(m, t)
        }""",
        w=image(6, 5),
        b=image(5),
        s=rng(3).uniform(0.5, 1.5, 5).astype(np.float32),
        t=image(5, seed=4),
    )
    out, outcome = apply(model, FoldChannelAffinePass())
    assert ops(out) == ["Gemm"]
    assert outcome.counts == {"Mul folded": 1, "Add folded": 1}
    assert_same_outputs(model, out, {"x": image(2, 6)})


def test_affine_that_is_not_per_channel_is_declined() -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y) {
            a = Conv(x, w)
            y = Mul(a, c)
        }""",
        w=image(4, 3, 3, 3),
        c=image(1, 1, 4, 4),
    )
    out, outcome = apply(model, FoldChannelAffinePass())
    assert ops(out) == ["Conv", "Mul"]
    assert "not per-channel" in outcome.skipped[0]
