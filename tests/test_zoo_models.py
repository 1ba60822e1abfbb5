"""tools/zoo_models.py: the normalization re-estimation behind the suite's model-zoo graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from helpers import parse, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from zoo_models import reestimate_normalization


def test_bn_statistics_and_lsuv_come_from_the_data() -> None:
    rng = np.random.default_rng(0)
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[4, 3, 8, 8] x) => (float[4, 5] y) {
            c = Conv(x, w1)
            n = BatchNormalization(c, gamma, beta, mean, var)
            r = Relu(n)
            p = GlobalAveragePool(r)
            f = Flatten(p)
            y = Gemm(f, w2, b2)
        }""",
        w1=rng.normal(0, 3, (6, 3, 3, 3)).astype(np.float32),
        gamma=np.full(6, 2.0, np.float32),
        beta=np.full(6, 0.5, np.float32),
        mean=np.zeros(6, np.float32),
        var=np.ones(6, np.float32),
        w2=rng.normal(0, 5, (6, 5)).astype(np.float32),
        b2=np.ones(5, np.float32),
    )
    data = rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    fixed = reestimate_normalization(model, data)
    onnx.checker.check_model(fixed, full_check=True)
    probe = onnx.ModelProto()
    probe.CopyFrom(fixed)
    probe.graph.output.extend([onnx.helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, None)])
    y, n = run(probe, {"x": data})
    assert np.allclose(n.mean(axis=(0, 2, 3)), 0.5, atol=1e-4)  # BN output: beta-centred
    assert np.allclose(n.std(axis=(0, 2, 3)), 2.0, rtol=1e-3)  # ... with gamma's spread
    assert abs(np.sqrt(np.mean(y**2)) - 1.0) < 1e-3  # LSUV: the Gemm (no BN after it) has unit RMS
