"""Models as users bring them: symbolic image sizes, inputs random data cannot fit, If subgraphs, fp16, old
opsets; and the exit status scripts rely on (3 when the lossy pass a run was for did not apply)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import parse, run

import onnxopt
from onnxopt.data import DataSpec, parse_input_shapes, sample_shapes
from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, timeout=300)


def _detector_neck(rng: np.random.Generator) -> onnx.ModelProto:
    """YOLO-style neck with dynamic H/W: two stride-2 Convs, a 2× Resize, a Concat with the first Conv. At
    H = W = 1 the upsampled map (2×2) cannot be concatenated with the 1×1 one: onnxruntime fails."""
    return parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 3, H, W] images) => (float[1, 16, h, w] y) {
            c1 = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (images, w1)
            r1 = Relu(c1)
            c2 = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (r1, w2)
            u = Resize <mode = "nearest"> (c2, , scales)
            y = Concat <axis = 1> (r1, u)
        }""",
        w1=rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        w2=rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        scales=np.array([1, 1, 2, 2], np.float32),
    )


def test_input_shape_rule() -> None:
    image = TensorSpec("images", np.dtype(np.float32), ("N", 3, "H", "W"))
    line = TensorSpec("line", np.dtype(np.float32), (1, 1, 64, "width"))
    tokens = TensorSpec("tokens", np.dtype(np.int64), ("N", "seq"))
    mask = TensorSpec("mask", np.dtype(np.float32), ("N", "seq"))
    shapes = sample_shapes([image, line, tokens, mask])
    assert shapes == {"images": (3, 224, 224), "line": (1, 64, 64), "tokens": (1,), "mask": (1,)}
    assert sample_shapes([image], parse_input_shapes("images:1x3x640x480"))["images"] == (3, 640, 480)
    assert parse_input_shapes("a:1x2, b:3") == {"a": (1, 2), "b": (3,)}
    for bad in ("images", "images:1xAx3", "images:0x3", "a:1,a:2"):
        with pytest.raises(DataError, match="--input-shape"):
            parse_input_shapes(bad)
    with pytest.raises(DataError, match="fixes it at 3"):
        DataSpec("random:2").open([image], shapes={"images": (1, 4, 8, 8)})
    with pytest.raises(DataError, match="no input 'x'"):
        DataSpec("random:2").open([image], shapes={"x": (1, 3, 8, 8)})


def test_dynamic_image_input_optimizes_without_and_with_input_shape(tmp_path: Path) -> None:
    model = _detector_neck(np.random.default_rng(0))
    path = tmp_path / "neck.onnx"
    onnx.save(model, str(path))
    with pytest.raises(Exception, match=r"Concat|concat|dimension"):  # what "H and W guessed as 1" did
        run(model, {"images": np.zeros((1, 3, 1, 1), np.float32)})
    plain = onnxopt.optimize(path, tmp_path / "a.onnx", recipe="lossless")
    assert plain.pipeline.outputs_compared and plain.comparison.samples > 0
    assert plain.comparison.max_rel <= 1e-4
    shaped = onnxopt.optimize(path, tmp_path / "b.onnx", recipe="lossless", input_shapes="images:1x3x64x96")
    assert shaped.pipeline.outputs_compared and shaped.comparison.max_rel <= 1e-4
    done = _cli("optimize", str(path), "-o", str(tmp_path / "c.onnx"), "--input-shape", "images:1x3x32x32")
    assert done.returncode == 0, done.stderr
    assert _cli("inspect", str(path)).stdout.count("not counted") == 0  # MACs of both Convs counted


def test_inputs_random_data_cannot_fit_get_a_structural_guard(tmp_path: Path) -> None:
    """An int64 shape input: random values (0/1) cannot be a valid Reshape target for this tensor."""
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 6] x, int64[2] shape) => (float[a, b] y) {
            s = Mul(x, two)
            y = Reshape(s, shape)
        }""",
        two=np.array([2.0], np.float32),
    )
    path = tmp_path / "reshape.onnx"
    onnx.save(model, str(path))
    result = onnxopt.optimize(path, tmp_path / "out.onnx", recipe="lossless")
    assert not result.pipeline.outputs_compared
    assert result.comparison.samples == 0
    assert any("outputs NOT compared" in n and "--data" in n for n in result.pipeline.notes)
    assert not [r for r in result.pipeline.records if r.status == "rolled back"]
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(1, 6), "shape": np.array([2, 3], np.int64)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(model, feeds)[0])
    lossy = onnxopt.optimize(path, tmp_path / "q.onnx", passes="lossless,quantize")
    assert any("lossy pass needs outputs" in s for r in lossy.pipeline.records for s in r.skipped)
    assert lossy.fell_back  # and the CLI exits 3 for it


def _conv_if_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> Relu -> If: both branches read the Relu's output from the outer scope with their own Conv."""
    then_w = onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "tw")
    else_w = onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "ew")
    out = onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    then_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["r", "tw"], ["b"])], "then", [], [out], [then_w]
    )
    else_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["r", "ew"], ["b"])], "else", [], [out], [else_w]
    )
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Relu", ["c"], ["r"]),
        onnx.helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        onnx.helper.make_node("Greater", ["m", "zero"], ["cond"]),
        onnx.helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "conv_if",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prune_and_quantize_leave_tensors_a_subgraph_reads(tmp_path: Path, seed: int) -> None:
    model = _conv_if_model(np.random.default_rng(seed))
    path = tmp_path / "if.onnx"
    onnx.save(model, str(path))
    pruned = onnxopt.optimize(path, tmp_path / "p.onnx", passes="prune-channels:ratio=0.5", seed=seed)
    skipped = [s for r in pruned.pipeline.records for s in r.skipped]
    assert any("read inside a subgraph" in s for s in skipped), skipped
    assert any("both branches" in n for n in pruned.pipeline.notes), pruned.pipeline.notes
    out = onnx.load(str(tmp_path / "p.onnx"))
    for sign in (1.0, -1.0):  # both branches run on the written model
        feeds = {"x": sign * np.abs(np.random.default_rng(seed).normal(size=(1, 3, 8, 8))).astype(np.float32)}
        np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)
    quantized = onnxopt.optimize(path, tmp_path / "q.onnx", passes="quantize", data="random:16", seed=seed)
    q = onnx.load(str(tmp_path / "q.onnx"))
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    assert "r" not in dequantized and quantized.comparison.samples > 0


def test_quantize_declines_a_float16_model_before_any_work(tmp_path: Path) -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float16[1, 3, 8, 8] x) => (float16[1, 4, 8, 8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            y = Relu(c)
        }""",
        w=np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float16),
    )
    path = tmp_path / "half.onnx"
    onnx.save(model, str(path))
    result = onnxopt.optimize(path, tmp_path / "q.onnx", passes="quantize", data="random:8")
    (record,) = result.pipeline.records
    assert record.status == "unchanged" and record.notes == []
    assert any("float16" in s and "float32" in s for s in record.skipped), record.skipped
    done = _cli("optimize", str(path), "-o", str(tmp_path / "c.onnx"), "--passes", "quantize")
    assert done.returncode == 3 and "quantize declined" in done.stderr and "float16" in done.stderr


def test_exit_status_3_when_the_requested_lossy_pass_did_not_apply(tmp_path: Path) -> None:
    model = parse(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4] x) => (float[1, 4] y) { y = Softmax(x) }"""
    )  # nothing quantize can take: Softmax stays float
    path = tmp_path / "softmax.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out.onnx"
    done = _cli("optimize", str(path), "-o", str(out), "--passes", "quantize")
    assert done.returncode == 3, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("onnxopt:")]  # progress: "onnxopt progress:"
    assert "quantize declined" in line and "--allow-fallback" in line
    assert out.exists()  # the output is still written
    allowed = _cli("optimize", str(path), "-o", str(out), "--passes", "quantize", "--allow-fallback")
    assert allowed.returncode == 0, allowed.stderr
    lossless = _cli("optimize", str(path), "-o", str(out), "--recipe", "lossless")
    assert lossless.returncode == 0, lossless.stderr


def test_old_opset_runs_at_its_own_opset_and_upgrades_only_for_passes_that_need_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = parse(
        """<ir_version: 4, opset_import: ["": 7]>
        g (float[2, 3, 8, 8] x) => (float[2, 4, 8, 8] y) {
            i = Identity(x)
            c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (i, w)
            y = Relu(c)
        }""",
        w=rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
    )
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    lossless = onnxopt.optimize(path, tmp_path / "l.onnx", recipe="lossless")
    assert lossless.comparison.max_rel <= 1e-4 and lossless.comparison.samples > 0
    assert not [n for r in lossless.pipeline.records for n in r.notes if "opset upgraded" in n]
    assert onnx.load(str(tmp_path / "l.onnx")).opset_import[0].version == 7  # at its own opset
    quantized = onnxopt.optimize(path, tmp_path / "q.onnx", passes="lossless,quantize", data="random:16")
    notes = {r.name: r.notes for r in quantized.pipeline.records}
    assert "opset upgraded 7 -> 13" in notes["quantize"], notes
    assert not [r for r in quantized.pipeline.records if r.status == "rolled back"]
