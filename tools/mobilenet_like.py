"""A small MobileNet-style CNN (depthwise-separable blocks with BatchNorm) whose channels are badly balanced.

Real MobileNets quantize poorly per tensor because BatchNorm folding leaves
depthwise channels with weight ranges that differ by orders of magnitude
(Nagel et al. 2019, fig. 2). This builder reproduces that: He-initialized
weights, BN scales (gamma) drawn log-uniformly over ``gamma_spread`` decades,
and BN statistics re-estimated on data so activations stay in range
(:func:`zoo_models.reestimate_normalization`). Used by the equalize test and
the suite.

    stem Conv 3x3/2 (3->16) + BN + Relu
    3 x [ depthwise 3x3 + BN + Relu, pointwise 1x1 + BN + Relu ]   16->32, 32->64 (stride 2), 64->64
    GlobalAveragePool, Flatten, Gemm -> 10
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from zoo_models import reestimate_normalization

INPUT_SHAPE = (3, 32, 32)


def mobilenet_like(data: np.ndarray, *, seed: int = 0, gamma_spread: float = 2.0) -> onnx.ModelProto:
    """The model, with BN statistics re-estimated on ``data`` ([N, 3, 32, 32] float32)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv_bn_relu(x: str, name: str, c_in: int, c_out: int, k: int, stride: int, group: int) -> str:
        fan_in = c_in // group * k * k
        w = (rng.standard_normal((c_out, c_in // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        gamma = (10 ** rng.uniform(-gamma_spread / 2, gamma_spread / 2, c_out)).astype(np.float32)
        beta = rng.uniform(-0.5, 0.5, c_out).astype(np.float32)
        inits.extend(
            numpy_helper.from_array(a, f"{name}_{what}")
            for what, a in (
                ("w", w),
                ("gamma", gamma),
                ("beta", beta),
                ("mean", np.zeros(c_out, np.float32)),
                ("var", np.ones(c_out, np.float32)),
            )
        )
        pads = [k // 2] * 4
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}_w"], [f"{name}_conv"], name=name, strides=[stride] * 2, pads=pads, group=group
            )
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [f"{name}_conv", f"{name}_gamma", f"{name}_beta", f"{name}_mean", f"{name}_var"],
                [f"{name}_bn"],
                name=f"{name}_bn",
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    x = conv_bn_relu("input", "stem", 3, 16, 3, 2, 1)
    for i, (c_in, c_out, stride) in enumerate([(16, 32, 1), (32, 64, 2), (64, 64, 1)]):
        x = conv_bn_relu(x, f"block{i}_dw", c_in, c_in, 3, stride, c_in)
        x = conv_bn_relu(x, f"block{i}_pw", c_in, c_out, 1, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc = (rng.standard_normal((10, 64)) * np.sqrt(1.0 / 64)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "mobilenet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return reestimate_normalization(model, data)
