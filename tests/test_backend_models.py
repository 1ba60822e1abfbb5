"""End to end: ``lossless`` on every onnx backend-test model onnxruntime can run, without ``--data``.

Each model is optimized through the library's code path with no data and at its
own opset; the run must finish, no pass may be rolled back (a rollback means a
rewrite was wrong), and the result must agree with the original within the
lossless tolerance -- on random inputs where they run the model, on the test's
stored inputs where it has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from backend_models import cases, inputs_of, materialize_light

import onnxopt
from onnxopt.errors import UnsupportedModelError
from onnxopt.runtime import Runner

BIG = {"light/light_vgg19", "light/light_zfnet512", "light/light_bvlc_alexnet"}


def _prepare(case_id: str, path: Path, tmp_path: Path) -> Path:
    if case_id.startswith("light/"):
        model = materialize_light(onnx.load(str(path)))
        target = tmp_path / "model.onnx"
        onnx.save(model, str(target))
        return target
    return path


@pytest.mark.parametrize(
    ("case_id", "path"),
    [pytest.param(cid, p, id=cid, marks=[pytest.mark.slow] if cid in BIG else []) for cid, p in cases()],
)
def test_lossless_on_backend_model(case_id: str, path: Path, tmp_path: Path) -> None:
    """``lossless`` with no ``--data`` and no ``--target-opset``, as a user runs it on a model found in the wild:
    it must finish, roll nothing back, and -- where random inputs run the original -- agree with it; on the
    test's own stored inputs too, where it has them."""
    model_path = _prepare(case_id, path, tmp_path)
    try:
        Runner(model_path)
    except UnsupportedModelError as e:
        pytest.skip(f"onnxruntime cannot run it: {e}")
    result = onnxopt.optimize(model_path, tmp_path / "out.onnx", recipe="lossless", guard_samples=2)
    rolled_back = [(r.name, r.notes) for r in result.pipeline.records if r.status == "rolled back"]
    assert not rolled_back, rolled_back
    if result.pipeline.outputs_compared:
        assert result.comparison.max_rel <= 1e-4, result.comparison
    else:
        assert any("outputs NOT compared" in n for n in result.pipeline.notes)
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    declined_bn = any(
        "needs opset" in s or "standalone=keep" in s
        for r in result.pipeline.records
        if r.name == "fold-bn"
        for s in r.skipped
    )  # a BN kept on purpose (no layer to fold into) or one the opset forbids
    assert declined_bn or "BatchNormalization" not in {n.op_type for n in out.graph.node}
    feeds = inputs_of(path)
    if feeds is not None:  # the suite's own inputs: the rewrite must hold on real values, not only random ones
        expected = Runner(model_path).run(feeds)
        actual = Runner(tmp_path / "out.onnx").run(feeds)
        for e, a in zip(expected, actual, strict=True):
            if e.dtype.kind in "fc":
                finite = np.abs(e[np.isfinite(e)])
                scale = float(finite.max()) if finite.size else 1.0
                np.testing.assert_allclose(a, e, rtol=0, atol=1e-4 * max(scale, 1e-30), equal_nan=True)
            else:
                np.testing.assert_array_equal(a, e)
