"""The verdict line states only what the run measured (issue 33.1), and says when the measurements mean
nothing (issue 33.6).

Each case runs ``onnxopt optimize`` and then ``onnxopt compare`` on the same two files and the same data, and
holds the verdict's numbers against compare's.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main
from onnxopt.optimizer.pipeline import PassRecord
from onnxopt.optimizer.run import YARDSTICK_FLOOR_DB, _untrusted
from onnxopt.report.verdict import verdict


def _detector(path: Path, bias: float = 0.0) -> Path:
    """A small non-classifier (a 16x16 map through a Sigmoid); ``bias=-40`` makes its output about zero
    whatever the input, the way a text detector's map is on uniform noise."""
    rng = np.random.default_rng(0)
    inits = {
        "W1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "B1": np.zeros(8),
        "W2": rng.normal(0, 0.3, (1, 8, 3, 3)),
        "B2": np.full(1, bias),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _quiet_verdict(args: list[str], capsys) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code = main([*args, "-q"])
    return code, capsys.readouterr().out.strip().splitlines()[0]


def _compared(reference: Path, candidate: Path, data: list[str], capsys) -> dict:  # type: ignore[no-untyped-def]
    assert main(["compare", str(reference), str(candidate), *data, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["comparison"]


@pytest.mark.parametrize("with_data", [False, True])
def test_a_non_classifier_verdict_states_the_measured_snr_and_drift(tmp_path: Path, capsys, with_data: bool) -> None:
    model, out = _detector(tmp_path / "det.onnx"), tmp_path / "det.int8.onnx"
    data = []
    if with_data:
        x = np.random.default_rng(1).uniform(0, 1, (24, 3, 16, 16)).astype(np.float32)
        np.savez(tmp_path / "d.npz", x=x)
        data = ["--data", str(tmp_path / "d.npz")]
    # int8 weights (a lossy, measurable change) without the speed checks that make this test slow
    passes = "quantize:weights_only=true;rounding=nearest"
    code, line = _quiet_verdict(["optimize", str(model), str(out), "--passes", passes, *data], capsys)
    assert code == 0
    cmp = _compared(model, out, data, capsys)
    (output,) = cmp["outputs"]
    assert output["max_rel"] > 0  # the rewrite did change the output: a drift of 0 would be false
    assert f"worst output SNR {float(output['snr_db']):.1f} dB" in line
    assert f"max output drift {output['max_rel']:.3g} of the output range" in line
    assert f"({cmp['samples']} samples of " in line


def test_a_classifier_verdict_states_accuracy_or_agreement_as_compare_measured(tmp_path: Path, capsys) -> None:
    model, out = BUNDLED / "model.onnx", tmp_path / "digits.onnx"
    with np.load(BUNDLED / "eval.npz") as d:
        np.savez(tmp_path / "l.npz", image=d["image"][:64], labels=d["labels"][:64])
        np.savez(tmp_path / "u.npz", image=d["image"][:64])
    passes = "quantize:weights_only=true;rounding=nearest"
    run = ["optimize", str(model), str(out), "--passes", passes, "--data"]
    code, line = _quiet_verdict([*run, str(tmp_path / "l.npz")], capsys)
    assert code == 0
    cmp = _compared(model, out, ["--data", str(tmp_path / "l.npz")], capsys)
    points = 100 * (cmp["candidate_accuracy"] - cmp["reference_accuracy"])
    assert f"accuracy {points:+.2f} pts (64 samples of --data" in line
    code, line = _quiet_verdict([*run, str(tmp_path / "u.npz")], capsys)
    cmp = _compared(model, out, ["--data", str(tmp_path / "u.npz")], capsys)
    agreement = min(o["top1_agreement"] for o in cmp["outputs"] if o["top1_agreement"] is not None)
    assert f"top-1 agreement with the original {agreement:.4f} (64 samples" in line


def test_a_run_that_compared_nothing_states_no_number(tmp_path: Path, capsys) -> None:
    """Random inputs cannot run this model (width 1 cannot be reshaped to [1, -1, 4]): no samples, no number."""
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, T] x) => (float[1, ?, 4] y) <int64[3] shape = {1, -1, 4}> {
            y = Reshape(x, shape)
        }"""
    )
    onnx.save(proto, tmp_path / "rec.onnx")
    code, line = _quiet_verdict(["optimize", str(tmp_path / "rec.onnx"), str(tmp_path / "o.onnx")], capsys)
    assert code == 0
    assert "outputs NOT compared" in line
    assert "samples" not in line and "drift" not in line


def _report(**comparison) -> dict:  # type: ignore[no-untyped-def]
    cmp = {
        "samples": 8,
        "outputs": [{"name": "y", "max_rel": 0.306, "snr_db": 12.1, "top1_agreement": None}],
        "reference_accuracy": None,
        "candidate_accuracy": None,
        "random_inputs": False,
        **comparison,
    }
    return {
        "recipe_name": "int8",
        "input": {"file_bytes": 400},
        "output": {"file_bytes": 100},
        "latency": None,
        "held_out": True,
        "comparison": cmp,
        "machine": {"cpu": "cpu", "cpu_features": ["avx2"]},
    }


def test_the_verdict_reads_only_what_the_report_holds() -> None:
    line = verdict(_report())
    assert "worst output SNR 12.1 dB, max output drift 0.306 of the output range (8 held-out samples)" in line
    inf = _report(outputs=[{"name": "y", "max_rel": 0.0, "snr_db": "inf", "top1_agreement": None}])
    assert "outputs identical, max output drift 0" in verdict(inf)  # JSON writes an infinite SNR as "inf"
    broken = _report()
    del broken["comparison"]["outputs"][0]["max_rel"]
    with pytest.raises(KeyError):  # a report without the key is a bug, not a drift of 0
        verdict(broken)
    with pytest.raises(KeyError):
        verdict({k: v for k, v in _report().items() if k != "held_out"})


def test_a_degenerate_guard_reference_is_said_and_exits_3(tmp_path: Path, capsys) -> None:
    """Issue 33.6: random inputs drive this model's output to about zero, so no comparison means anything."""
    model = _detector(tmp_path / "dead.onnx", bias=-40.0)
    out = tmp_path / "dead.int8.onnx"
    passes = "quantize:weights_only=true;rounding=nearest"
    code = main(["optimize", str(model), str(out), "--passes", passes, "-q"])
    captured = capsys.readouterr()
    assert code == 3
    assert "NOT trustworthy: guard data: output 'y' is about zero on this data" in captured.out
    assert "give --data with real inputs" in captured.err
    assert main(["optimize", str(model), str(out), "--passes", passes, "-q", "--allow-fallback"]) == 0
    capsys.readouterr()
    # nothing changed, nothing to vouch for: a lossless run of the same model is not a fallback
    assert main(["optimize", str(model), str(tmp_path / "same.onnx"), "-q"]) == 0


def test_a_model_whose_output_ignores_the_input_is_degenerate(tmp_path: Path, capsys) -> None:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4] x) => (float[1, 4] y) <float[1, 4] c = {1, 2, 3, 4}> {
            z = Mul(x, c)
            zero = Sub(z, z)
            y = Add(zero, c)
            dead = Relu(x)
        }"""
    )
    onnx.save(proto, tmp_path / "const.onnx")
    code = main(["optimize", str(tmp_path / "const.onnx"), str(tmp_path / "o.onnx"), "-q"])
    captured = capsys.readouterr()
    assert code == 3, captured
    assert "is the same for every sample of this data" in captured.out


def test_one_sample_of_data_gets_a_warning(tmp_path: Path, capsys) -> None:
    model = _detector(tmp_path / "det.onnx")
    np.savez(tmp_path / "one.npz", x=np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32))
    assert main(["optimize", str(model), str(tmp_path / "o.onnx"), "--data", str(tmp_path / "one.npz")]) == 0
    assert "WARNING: --data has 1 sample" in capsys.readouterr().out


def test_a_yardstick_far_below_any_budget_is_untrusted() -> None:
    """The quantizer's weights-only yardstick at -16 dB (a text detector on random inputs) makes its budget
    meaningless: the run says so (a fallback, exit 3)."""

    record = PassRecord("quantize", {}, "applied", 0.0, None, None)  # type: ignore[arg-type]
    result = types.SimpleNamespace(reference_problem=None, records=[record])
    record.details = [{"output": "map", "weights_only_snr_db": -16.0}]
    (reason,) = _untrusted(result, random=True)  # type: ignore[arg-type]
    assert "'map' at -16.0 dB SNR" in reason and f"below {YARDSTICK_FLOOR_DB:g} dB" in reason
    record.details = [{"output": "map", "weights_only_snr_db": 38.0}]
    assert _untrusted(result, random=True) == []  # type: ignore[arg-type]
    assert math.isfinite(YARDSTICK_FLOOR_DB)


def test_sizes_count_external_data(tmp_path: Path, capsys) -> None:
    """Issue 33.8: an input whose weights are in an external file is as large as both files together."""
    model = onnx.load(_detector(tmp_path / "det.onnx"))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    total = (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.data").stat().st_size
    code = main(["optimize", str(tmp_path / "ext.onnx"), str(tmp_path / "o.onnx"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["input"]["file_bytes"] == total
    assert "larger" not in verdict(report)  # the same weights, embedded: about the same size


def test_an_already_quantized_model_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    """Issue 33.8: --recipe int8 on a QDQ model says so at once (exit 2, nothing written)."""
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["": 13]>
        g (float[1, 4] x) => (float[1, 4] y)
        <float s = {0.1}, uint8 z = {128}, float[4, 4] w = {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
            q = QuantizeLinear(x, s, z)
            d = DequantizeLinear(q, s, z)
            y = MatMul(d, w)
        }"""
    )
    onnx.save(proto, tmp_path / "qdq.onnx")
    out = tmp_path / "o.onnx"
    code = main(["optimize", str(tmp_path / "qdq.onnx"), str(out), "--recipe", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "already quantized (1 DequantizeLinear, 1 QuantizeLinear node(s))" in err[0]
    assert not out.exists()
    assert main(["optimize", str(tmp_path / "qdq.onnx"), str(out)]) == 0  # lossless is fine
