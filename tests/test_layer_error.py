"""Per-layer error localization: names the layer that broke, matches renamed and QDQ tensors, stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, parse
from onnx import numpy_helper

from onnxopt.api import optimize
from onnxopt.cli import main
from onnxopt.data import open_dataset
from onnxopt.evaluate.layers import layer_errors
from onnxopt.runtime import Runner

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"


def _dataset(samples: int = 32):
    return open_dataset(f"random:{samples}", Runner(str(MODEL)).inputs)


def _broken(tmp_path: Path, which: int) -> tuple[Path, str]:
    """The bundled model with the weights of its ``which``-th Conv scaled by 10."""
    model = onnx.load(str(MODEL))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][which]
    for tensor in model.graph.initializer:
        if tensor.name == conv.input[1]:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 10, tensor.name))
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    return path, conv.output[0]


@pytest.mark.parametrize("which", [0, 1])
def test_broken_conv_is_named_first(tmp_path: Path, which: int) -> None:
    path, conv_output = _broken(tmp_path, which)
    report = layer_errors(onnx.load(str(MODEL)), onnx.load(str(path)), _dataset())
    assert report.first_bad == conv_output
    assert report.largest_added == conv_output
    before = [layer for layer in report.layers][: [x.tensor for x in report.layers].index(conv_output)]
    assert all(np.isinf(layer.snr_db) for layer in before)  # everything upstream is untouched


def test_compare_per_layer_cli_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, conv_output = _broken(tmp_path, 1)
    assert main(["compare", str(MODEL), str(path), "--data", str(EVAL), "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert f"first layer below 20 dB: {conv_output}" in out


def test_lossless_output_breaks_no_layer(tmp_path: Path) -> None:
    """Folds keep names only where the meaning is kept, so nothing mismatches spuriously."""
    out = tmp_path / "opt.onnx"
    optimize(MODEL, out, recipe="lossless", data="random:4")
    report = layer_errors(onnx.load(str(MODEL)), onnx.load(str(out)), _dataset())
    assert report.first_bad is None
    assert len(report.layers) >= 12 and report.unmatched <= 3
    assert min(layer.snr_db for layer in report.layers) > 100


def test_qdq_model_is_matched_through_dequantize(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(EVAL) as data:
                self.items = iter([{"image": data["image"][i : i + 16]} for i in range(0, 64, 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantized = tmp_path / "qdq.onnx"
    quantize_static(str(MODEL), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    candidate = onnx.load(str(quantized))
    dq_outputs = {n.output[0] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    report = layer_errors(onnx.load(str(MODEL)), candidate, open_dataset(str(EVAL), Runner(str(MODEL)).inputs))
    through_dq = [layer for layer in report.layers if layer.candidate_tensor in dq_outputs]
    assert through_dq, "no tensor was matched to its DequantizeLinear output"
    outputs = {o.name for o in candidate.graph.output}  # a graph output keeps its name on its DequantizeLinear
    assert all(layer.tensor != layer.candidate_tensor for layer in through_dq if layer.tensor not in outputs)
    assert all(layer.snr_db > 20 for layer in report.layers)  # int8 on this model: no layer breaks
    assert any(layer.snr_db < 80 for layer in through_dq)  # but quantization error is visible


def test_memory_budget_splits_the_layers_without_changing_results() -> None:
    reference, candidate = onnx.load(str(MODEL)), onnx.load(str(MODEL))
    for tensor in candidate.graph.initializer:  # a small, spread-out error everywhere
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.ndim >= 2:
            tensor.CopyFrom(numpy_helper.from_array(array * np.float32(1.001), tensor.name))
    whole = layer_errors(reference, candidate, _dataset(16))
    split = layer_errors(reference, candidate, _dataset(16), max_batch_bytes=64 * 1024)
    assert [x.tensor for x in whole.layers] == [x.tensor for x in split.layers]
    assert np.allclose([x.snr_db for x in whole.layers], [x.snr_db for x in split.layers], rtol=1e-9)


def test_the_graph_output_is_a_layer_too(tmp_path: Path) -> None:
    # the error the last layer adds shows only at the graph output: a broken head must be named there
    model = onnx.load(str(MODEL))
    producer = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    bias_add = next(n for n in model.graph.node if n.output[0] == producer.input[0])
    for tensor in model.graph.initializer:
        if tensor.name == bias_add.input[1]:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 3.0, tensor.name))
    path = tmp_path / "head.onnx"
    onnx.save(model, str(path))
    report = layer_errors(onnx.load(str(MODEL)), onnx.load(str(path)), _dataset())
    names = [layer.tensor for layer in report.layers]
    assert model.graph.output[0].name in names
    assert report.largest_added in (bias_add.output[0], model.graph.output[0].name)
    assert all(np.isinf(layer.snr_db) for layer in report.layers[: names.index(bias_add.output[0])])


def _hardswish_model() -> onnx.ModelProto:
    """Conv, HardSwish as paddle2onnx writes it (``x * Clip(x + 3, 0, 6) / 6``), Conv: the quantize pass folds the
    ``/ 6`` into the quantizer of the Mul's output (``Q(m, s * 6) -> DQ(s)`` reads ``m / 6``)."""
    g = np.random.default_rng(0)
    return parse(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 3, 16, 16] x) => (float[1, 8, 16, 16] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            a = Add (c, three)
            gate = Clip (a, zero, six)
            m = Mul (c, gate)
            h = Div (m, six)
            y = Conv <pads = [1, 1, 1, 1]> (h, w2, b2)
        }
        """,
        w1=g.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), b1=g.normal(0, 0.1, 8).astype(np.float32),
        w2=g.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), b2=g.normal(0, 0.1, 8).astype(np.float32),
        three=np.array(3.0, np.float32), zero=np.array(0.0, np.float32), six=np.array(6.0, np.float32),
    )  # fmt: skip


def test_a_quantizer_that_absorbed_a_scale_is_not_matched_to_its_input(tmp_path: Path) -> None:
    # the /6 of the HardSwish is folded into the quantizer of m: its DequantizeLinear reads h, not m; matched
    # with m, every HardSwish of a PP-LCNet or PicoDet read 1.6 dB and the budget's ranking charged the loss
    # to the wrong layers
    source, quantized = tmp_path / "hardswish.onnx", tmp_path / "int8.onnx"
    onnx.save(_hardswish_model(), str(source))
    optimize(source, quantized, passes="quantize:fallback=none", data="random:32")
    candidate = onnx.load(str(quantized))
    scales = {n.input[0]: n.input[1] for n in candidate.graph.node if n.op_type == "QuantizeLinear"}
    read_at = {n.input[0]: n.input[1] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    quantized_m = next(n.output[0] for n in candidate.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "m")
    assert scales["m"] != read_at[quantized_m], "the quantize pass no longer folds the / 6: this test tests nothing"
    report = layer_errors(onnx.load(str(source)), candidate, open_dataset("random:32", Runner(str(source)).inputs))
    layers = {layer.tensor: layer for layer in report.layers}
    assert layers["m"].candidate_tensor == "m"  # its own float, not the DequantizeLinear that reads h = m / 6
    assert layers["m"].snr_db > 25 and layers["y"].snr_db > 20  # int8 error only; compared with h, m read 1.6 dB
