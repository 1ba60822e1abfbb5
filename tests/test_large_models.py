"""Models over protobuf's 2 GB limit: every onnxruntime session onnxopt opens on an IR model reads the graph
without its weights (SharedWeightsModel), so nothing serializes a whole model.

No 2 GB file here: ``onnx.ModelProto.SerializeToString`` is patched to fail on any message larger than
:data:`LIMIT` (the bundled model's weights are 900 KB, its weightless graph under 20 KB), and each result is
checked against the old path that serialized the whole model. ``tools/bench_large_model.py`` runs the same
on a real 2.1 GB model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import BUNDLED

from onnxopt import io
from onnxopt.api import compare_files, optimize
from onnxopt.data import open_dataset
from onnxopt.evaluate.layers import layer_errors
from onnxopt.optimizer import quality
from onnxopt.optimizer.calibration import activations
from onnxopt.optimizer.node_profile import UNATTRIBUTED, profile_nodes, profile_nodes_interleaved
from onnxopt.optimizer.quality import QualityProbe
from onnxopt.runtime import Runner
from onnxopt.shapes import annotate_shapes
from onnxopt.shared_weights import SharedWeightsModel, cut

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"
LIMIT = 64 * 1024  # bytes: any whole model of the bundled one is over it, any weightless graph under it
_unguarded = onnx.ModelProto.SerializeToString  # the real method, taken before any test patches it
NAMES = ["sequential_1/conv2d_1/Relu:0", "sequential_1/flatten_1/Shape:0", "sequential_1/dense_1/Relu:0"]


class WholeModelSerialized(BaseException):  # not an Exception: no best-effort `except Exception` swallows it
    pass


@pytest.fixture
def no_whole_model(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make serializing any ModelProto over LIMIT bytes raise; yields the sizes that were serialized."""
    original = onnx.ModelProto.SerializeToString
    sizes: list[int] = []

    def guarded(self: onnx.ModelProto, *args, **kwargs) -> bytes:
        size = self.ByteSize()
        if size > LIMIT:
            raise WholeModelSerialized(f"a {size}-byte model was serialized")
        sizes.append(size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", guarded)
    return sizes


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "int8.onnx"
    optimize(MODEL, path, passes="lossless,quantize", data=str(EVAL))
    return path


def _dataset(samples: int = 16):
    return open_dataset(f"random:{samples}", Runner(str(MODEL)).inputs)


def test_the_guard_patch_catches_a_whole_model(no_whole_model: list[int]) -> None:
    with pytest.raises(WholeModelSerialized):
        io.to_proto(io.load(MODEL)).SerializeToString()
    frozen = SharedWeightsModel(io.load(MODEL))  # the weightless graph is allowed
    assert no_whole_model and max(no_whole_model) < 20_000 and frozen.arrays


def _expose(model: ir.Model, names: Sequence[str]) -> onnx.ModelProto:
    """The old path: ``model`` as a ModelProto with ``names`` added to its graph outputs."""
    proto = io.to_proto(model)
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name in present:
            continue
        value = values.get(name)
        elem = value.dtype.value if value is not None and value.dtype is not None else onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return proto


def test_activations_match_the_serialized_prefix(no_whole_model: list[int]) -> None:
    model = io.load(MODEL)
    annotate_shapes(model)  # as the pipeline does: the int64 Shape output is typed
    dataset = _dataset()
    old_runner = Runner(_unguarded(cut(_expose(model, NAMES), NAMES)))  # the old path: the whole prefix serialized
    old = [old_runner.run(b.feeds, NAMES) for b in dataset.batches(16, 16)]
    new = list(activations(model, NAMES, dataset, limit=16, batch_size=16))
    assert len(new) == len(old) == 1
    for name, array in zip(NAMES, old[0], strict=True):
        np.testing.assert_array_equal(new[0][name], array)
    assert new[0]["sequential_1/flatten_1/Shape:0"].dtype == np.int64  # typed as the IR typed it


def test_a_cut_session_gets_only_the_weights_it_reads() -> None:
    frozen = SharedWeightsModel(io.load(MODEL))
    path, values = frozen.session_source([NAMES[0]], only_outputs=True)
    graph = onnx.load(str(path), load_external_data=False)
    assert [o.name for o in graph.graph.output] == [NAMES[0]]
    assert set(values) == {"sequential_1/conv2d_1/convolution/ReadVariableOp:0"} < set(frozen.arrays)
    assert all(n.op_type != "MatMul" for n in graph.graph.node)


def test_reading_sessions_leave_the_models_arrays_writable() -> None:
    model = io.load(MODEL)
    weight = next(n for n in model.graph if n.op_type == "Conv").inputs[1]
    weight.const_value = ir.Tensor(np.array(weight.const_value.numpy()), name=weight.name)
    list(activations(model, NAMES[:1], _dataset(4), limit=4))
    QualityProbe(model, _dataset(4), limit=4).score(model)
    assert weight.const_value.numpy().flags.writeable
    SharedWeightsModel(model)  # the guard's snapshot does protect them
    assert not weight.const_value.numpy().flags.writeable


@pytest.mark.parametrize("which", ["float", "int8"])
def test_profile_attributes_the_same_nodes(
    which: str, quantized: Path, no_whole_model: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = io.load(MODEL if which == "float" else quantized)
    feeds = next(iter(_dataset(4).batches(4, 4, exact=True))).feeds
    new = profile_nodes(model, feeds, runs=3, seconds=0.0)
    monkeypatch.setattr("onnxopt.shared_weights.SHARE_MIN_BYTES", 2**62)  # every weight embedded
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", _unguarded)
    old = profile_nodes(model, feeds, runs=3, seconds=0.0)
    assert set(new.times) == set(old.times) and len(set(new.times) - {UNATTRIBUTED}) >= 8
    assert new.ops == old.ops
    if which == "int8":
        assert "QLinearConv" in new.ops.values() or "QLinearMatMul" in new.ops.values()  # fused: optimizers saw it


def test_quality_probe_scores_as_the_serialized_model(
    quantized: Path, no_whole_model: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    original, candidate = io.load(MODEL), io.load(quantized)
    dataset = open_dataset(str(EVAL), Runner(str(MODEL)).inputs)
    new = QualityProbe(original, dataset, limit=64)
    new_score = new.score(candidate)

    def old_runner(model: ir.Model, providers: tuple[str, ...]) -> Runner:
        return Runner(_unguarded(ir.serde.serialize_model(model)), providers=providers, optimize=True)

    monkeypatch.setattr(quality, "_runner", old_runner)
    old = QualityProbe(original, dataset, limit=64)
    assert new.metric == old.metric == "accuracy"
    assert new.baseline == old.baseline
    assert new_score == old.score(candidate)


def test_layer_report_is_the_serialized_models_report(
    quantized: Path, no_whole_model: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = _dataset()
    from_ir = layer_errors(io.load(MODEL), io.load(quantized), dataset, max_batch_bytes=64 * 1024)
    from_proto = layer_errors(onnx.load(str(MODEL)), onnx.load(str(quantized)), dataset)
    monkeypatch.setattr("onnxopt.shared_weights.SHARE_MIN_BYTES", 2**62)  # the whole model, serialized
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", _unguarded)
    old = layer_errors(onnx.load(str(MODEL)), onnx.load(str(quantized)), dataset)
    assert len(old.layers) >= 10
    assert from_ir.to_dict() == from_proto.to_dict() == old.to_dict()


def test_layer_errors_reads_sparse_storage(tmp_path: Path, quantized: Path) -> None:
    sparse = tmp_path / "sparse.onnx"
    optimize(MODEL, sparse, passes="prune-magnitude:sparsity=0.85", data="random:4", storage="sparse")
    assert onnx.load(str(sparse)).graph.sparse_initializer
    report = layer_errors(onnx.load(str(MODEL)), onnx.load(str(sparse)), _dataset())
    dense = layer_errors(onnx.load(str(MODEL)), io.to_proto(io.load(sparse)), _dataset())
    assert report.to_dict() == dense.to_dict() and report.layers


def test_optimize_and_compare_never_serialize_the_whole_model(tmp_path: Path, no_whole_model: list[int]) -> None:
    """The whole run (calibration, guard, per-layer, saving with external data, compare) as on a 2 GB model."""
    out = tmp_path / "int8.onnx"
    result = optimize(MODEL, out, passes="lossless,quantize", data=str(EVAL), external_data=True, per_layer=True)
    statuses = {r.name: r.status for r in result.pipeline.records}
    assert statuses["quantize"] == "applied" and statuses["fold-bn"] == "applied"
    assert result.comparison.layers is not None and len(result.comparison.layers.layers) >= 10
    compared = compare_files(MODEL, out, data=str(EVAL), per_layer=True)
    assert compared.layers is not None
    assert [layer.tensor for layer in compared.layers.layers] == [
        layer.tensor for layer in result.comparison.layers.layers
    ]


def test_profiles_taken_in_turn_keep_each_models_own_nodes(quantized: Path) -> None:
    """The float and the int8 model profiled in turn (one run of each, alternately) get each its own kernels,
    attributed as a profile of that model alone attributes them."""
    models = [io.load(MODEL), io.load(quantized)]
    feeds = next(iter(_dataset(4).batches(4, 4, exact=True))).feeds
    together = profile_nodes_interleaved(models, feeds, runs=3, seconds=0.0)
    alone = [profile_nodes(model, feeds, runs=3, seconds=0.0) for model in models]
    for model, pair, single in zip(models, together, alone, strict=True):
        assert set(pair.times) == set(single.times) and pair.ops == single.ops
        assert all(pair.times[n.name] > 0.0 for n in model.graph if n.op_type == "Conv")  # whole µs: a Conv is more
    assert "QLinearConv" in together[1].ops.values() and "QLinearConv" not in together[0].ops.values()
