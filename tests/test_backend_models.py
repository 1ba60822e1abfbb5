"""End to end: ``lossless`` on every onnx backend-test model onnxruntime can run.

Each model is optimized through the CLI's code path; the run must finish,
no pass may be rolled back (a rollback means a rewrite was wrong), and the
result must agree with the original within the lossless tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from backend_models import cases, inputs_of, materialize_light

import onnxopt
from onnxopt.errors import UnsupportedModelError
from onnxopt.io import MIN_OPSET
from onnxopt.runtime import Runner

BIG = {"light/light_vgg19", "light/light_zfnet512", "light/light_bvlc_alexnet"}


def _prepare(case_id: str, path: Path, tmp_path: Path) -> tuple[Path, str | None]:
    if case_id.startswith("light/"):
        model = materialize_light(onnx.load(str(path)))
        target = tmp_path / "model.onnx"
        onnx.save(model, str(target))
        return target, None
    feeds = inputs_of(path)
    if feeds is None:
        return path, None
    data = tmp_path / "inputs.npz"
    np.savez(data, **feeds)
    return path, str(data)


@pytest.mark.parametrize(
    ("case_id", "path"),
    [pytest.param(cid, p, id=cid, marks=[pytest.mark.slow] if cid in BIG else []) for cid, p in cases()],
)
def test_lossless_on_backend_model(case_id: str, path: Path, tmp_path: Path) -> None:
    model_path, data = _prepare(case_id, path, tmp_path)
    try:
        Runner(model_path)
    except UnsupportedModelError as e:
        pytest.skip(f"onnxruntime cannot run it: {e}")
    opset = next(o.version for o in onnx.load(str(model_path), load_external_data=False).opset_import if o.domain == "")
    target = MIN_OPSET if opset < MIN_OPSET else None  # old pytorch-converted models: converted first
    try:
        result = onnxopt.optimize(
            model_path, tmp_path / "out.onnx", recipe="lossless", data=data, guard_samples=2, target_opset=target
        )
    except onnxopt.UnsupportedModelError as e:
        if target is None:
            raise
        pytest.skip(f"onnx's version converter cannot bring it to opset {target}: {e}")
    rolled_back = [(r.name, r.notes) for r in result.pipeline.records if r.status == "rolled back"]
    assert not rolled_back, rolled_back
    assert result.comparison.max_rel <= 1e-4, result.comparison
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert "BatchNormalization" not in {n.op_type for n in out.graph.node}
