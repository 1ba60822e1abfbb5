"""SharedWeightsModel: the guard's view of a model matches the fully serialized model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import BUNDLED, run

from onnxopt import io
from onnxopt.shared_weights import SharedWeightsModel


def test_session_over_shared_weights_matches_the_serialized_model() -> None:
    model = io.load(BUNDLED / "model.onnx")
    frozen = SharedWeightsModel(model)
    assert len(frozen.graph_bytes) < 20_000  # the 900 KB of weights are not in the graph bytes
    assert frozen.arrays and all(not a.flags.writeable for a in frozen.arrays.values())
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    shared = frozen.runner().run({"image": x})[0]
    full = run(io.to_proto(model), {"image": x})[0]
    np.testing.assert_array_equal(shared, full)
    frozen.check()


def test_restore_returns_the_frozen_model_even_after_later_edits() -> None:
    model = io.load(BUNDLED / "model.onnx")
    frozen = SharedWeightsModel(model)
    before = io.to_proto(model).SerializeToString()
    weight = next(n for n in model.graph if n.op_type == "Conv").inputs[1]
    weight.const_value = ir.tensor(np.zeros(weight.const_value.shape.numpy(), np.float32), name=weight.name)
    assert io.to_proto(frozen.restore()).SerializeToString() == before


def test_checker_failure_surfaces() -> None:
    model = io.load(BUNDLED / "model.onnx")
    node = next(n for n in model.graph if n.op_type == "Relu")
    node.attributes["bogus"] = ir.AttrInt64("bogus", 1)  # Relu has no such attribute
    with pytest.raises(onnx.checker.ValidationError):
        SharedWeightsModel(model).check()
