"""quantize: QDQ int8 that onnxruntime fuses into integer kernels, with small accuracy cost."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from helpers import BUNDLED, fused_ops, parse

from onnxopt.api import optimize

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"


# The int8 recipe without its timing decision (fallback=profile measures this machine's latency, which a test
# cannot assert on a shared CI machine; test_quantize_search scripts it instead).
INT8_UNTIMED = "lossless,equalize,quantize:calibration=percentile;percentile=99.999;bias_correct=true;rounding=gptq"


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    result = optimize(MODEL, folder / "int8.onnx", passes=INT8_UNTIMED, data=str(EVAL))
    return result, folder / "int8.onnx"


def test_the_int8_recipe_is_the_untimed_one_plus_the_speed_decision_its_guard_and_qat() -> None:
    from onnxopt.optimizer.recipe import BUILTIN_RECIPES

    assert BUILTIN_RECIPES["int8"] == INT8_UNTIMED.replace("lossless", BUILTIN_RECIPES["lossless"]).replace(
        "quantize:calibration=percentile;percentile=99.999;bias_correct=true;rounding=gptq",
        "quantize:calibration=percentile;percentile=99.999;fallback=profile;bias_correct=true;rounding=gptq;"
        "max_db_loss=3;max_reading_drop=0.01;qat=auto",
    )


def test_int8_recipe_without_data_warns_and_stays_valid(tmp_path) -> None:
    from onnxopt.cli import main

    out = tmp_path / "q.onnx"
    import contextlib
    import io as text_io

    printed = text_io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["optimize", str(MODEL), "-o", str(out), "--recipe", "int8", "--batch", "32", "--allow-fallback"])
        assert code == 0
    text = printed.getvalue()
    assert "WARNING: no --data given" in text and "accuracy is unmeasured" in text
    assert "x float at batch 32" in text  # the speed decision was measured at the deployment batch
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_int8_recipe_on_the_bundled_model(int8) -> None:
    result, _ = int8
    cmp = result.comparison
    assert cmp.reference_accuracy - cmp.candidate_accuracy <= 0.005
    assert result.output_file_bytes <= 0.30 * result.input_file_bytes
    record = result.pipeline.records[-1]
    assert record.name == "quantize" and record.status == "applied"
    # two Convs, two MatMuls, and the depthwise Conv a standing BatchNormalization became
    assert record.counts["weights quantized"] == 5 and record.counts["biases quantized"] >= 2


def test_onnxruntime_runs_integer_kernels(int8, tmp_path) -> None:
    ops = fused_ops(int8[1], tmp_path)
    # the two Convs, and the BatchNormalization after a Relu (fold-bn cannot fold it) as a depthwise Conv
    assert ops["QLinearConv"] == 3 and ops["QLinearMatMul"] == 2
    assert "Conv" not in ops and "MatMul" not in ops  # nothing fell back to float


def test_weights_are_int8_per_channel_and_biases_int32(int8) -> None:
    model = onnx.load(str(int8[1]))
    inits = {t.name: t for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None]
    types = collections.Counter(inits[n.input[0]].data_type for n in dq)
    assert types[onnx.TensorProto.INT8] >= 4 and types[onnx.TensorProto.INT32] >= 2
    conv_weight_dq = [
        n for n in dq if inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 4
    ]
    assert all(onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in conv_weight_dq)  # per-channel scales


def test_old_opset_is_upgraded_never_written_invalid(tmp_path) -> None:
    rng = np.random.default_rng(0)
    model = parse(
        """<ir_version: 6, opset_import: ["": 11]>
        m (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {
            c = Conv<pads=[1,1,1,1]>(x, w, b)
            y = Relu(c)
        }""",
        w=rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        b=rng.normal(0, 0.1, 4).astype(np.float32),
    )
    src = tmp_path / "old.onnx"
    onnx.save(model, str(src))
    result = optimize(src, tmp_path / "q.onnx", passes="quantize:activations=int8", data="random:16")
    record = result.pipeline.records[0]
    assert record.status == "applied" and "opset upgraded 11 -> 13" in record.notes
    out = onnx.load(str(tmp_path / "q.onnx"))
    assert out.opset_import[0].version == 13
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize(
    "spec", ["quantize:calibration=kl", "quantize:activations=int4", "quantize:percentile=10", "quantize:exclude=["]
)
def test_impossible_parameters(spec: str) -> None:
    from onnxopt.errors import RecipeError
    from onnxopt.optimizer.recipe import build_passes, parse_spec

    with pytest.raises(RecipeError):
        build_passes(parse_spec(spec))


def test_prune_int8_end_to_end_with_a_report(tmp_path) -> None:
    report = tmp_path / "r.md"
    from onnxopt.cli import main

    args = ["optimize", str(MODEL), "-o", str(tmp_path / "p8.onnx"), "--recipe", "prune+int8", "--data", str(EVAL)]
    assert main([*args, "--report", str(report), "--bench-seconds", "0.2"]) == 0
    text = report.read_text()
    assert "| prune-channels | applied |" in text and "| reconstruct | applied |" in text
    # the recipe's speed decision depends on this machine's timing: int8 applied, or left float and said why
    assert "| quantize | applied |" in text or ("| quantize | unchanged |" in text and "left float" in text)
    assert "x float at batch" in text  # the decision was measured and reported either way
