"""``onnxopt compare`` as a check (issue 37, point 2): ``--atol``/``--rtol`` per element as numpy allclose,
``--min-snr``, ``--min-top1`` on classifier-shaped outputs; exit 0 when every output meets them (or none was
given), 1 with a FAIL line per output that misses one, 2 for impossible thresholds. The same in the API."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import one_line_error, parse

import onnxopt
from onnxopt.cli import main
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate.check import Thresholds, ToleranceAccumulator

#: the candidate adds this to column 3 of ``probs``; ``total`` (the row sum of the input) is the same in both
OFFSET = 0.05
ROWS = 32


def _model(offset: float, classifier: bool = True) -> onnx.ModelProto:
    """``probs = x + [0, 0, 0, offset]`` ([N, 4]: classifier-shaped) and ``total = sum(x, axis 1)`` ([N, 1]: not);
    without ``classifier``, ``total`` alone."""
    outputs = "float[N, 4] probs, float[N, 1] total" if classifier else "float[N, 1] total"
    body = "probs = Add(x, offset)\n total = ReduceSum(x, axes)" if classifier else "total = ReduceSum(x, axes)"
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    check (float[N, 4] x) => ({outputs}) {{
        {body}
    }}"""
    extra = {"offset": np.array([0, 0, 0, offset], np.float32)} if classifier else {}
    return parse(text, axes=np.array([1], np.int64), **extra)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """Rows in [0.6, 1): ``rtol`` 0.1 covers the offset everywhere, ``rtol`` 0.05 nowhere."""
    return np.random.default_rng(7).uniform(0.6, 1.0, (ROWS, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory, inputs) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("check")
    paths = {
        "ref": folder / "ref.onnx",
        "cand": folder / "cand.onnx",
        "sums": folder / "sums.onnx",
        "data": folder / "x.npz",
    }
    onnx.save(_model(0.0), str(paths["ref"]))
    onnx.save(_model(OFFSET), str(paths["cand"]))
    onnx.save(_model(0.0, classifier=False), str(paths["sums"]))
    np.savez(paths["data"], x=inputs)
    return paths


def _expected(inputs: np.ndarray) -> tuple[float, float]:
    """(SNR dB, top-1 agreement) of ``probs``, computed here from the data."""
    cand = inputs.astype(np.float64) + np.array([0, 0, 0, np.float32(OFFSET)])
    ref = inputs.astype(np.float64)
    snr = 10 * math.log10(float((ref**2).sum()) / float(((cand - ref) ** 2).sum()))
    return snr, float((ref.argmax(1) == cand.argmax(1)).mean())


def _compare(files: dict[str, Path], *flags: str) -> list[str]:
    return ["compare", str(files["ref"]), str(files["cand"]), "--data", str(files["data"]), *flags]


def test_without_thresholds_it_only_reports(files, capsys) -> None:
    assert main(_compare(files)) == 0
    out = capsys.readouterr().out
    assert "probs" in out and "FAIL" not in out and "PASS" not in out
    assert onnxopt.compare(files["ref"], files["cand"], data=files["data"]).passed is None


def test_atol_fails_the_output_that_misses_it_and_names_it(files, capsys) -> None:
    assert main(_compare(files, "--atol", "0.01", "--chunk", "8")) == 1  # four batches, streamed
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fails == [f"FAIL probs: max abs diff 0.05 > --atol 0.01 ({ROWS} of {ROWS * 4} elements)"]
    assert main(_compare(files, "--atol", "0.06")) == 0
    assert "PASS: every output meets --atol 0.06" in capsys.readouterr().out


def test_rtol_is_relative_to_the_reference_and_adds_to_atol_as_in_allclose(files, inputs, capsys) -> None:
    assert main(_compare(files, "--rtol", "0.05")) == 1  # 0.05 * |ref| < 0.05: every column-3 element misses
    [fail] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    found = re.fullmatch(rf"FAIL probs: max rel diff ([\d.]+) > --rtol 0.05 \({ROWS} of {ROWS * 4} elements\)", fail)
    assert found, fail
    assert float(found.group(1)) == pytest.approx(OFFSET / float(inputs[:, 3].min()), rel=1e-2)
    assert main(_compare(files, "--rtol", "0.1")) == 0  # 0.1 * |ref| >= 0.06
    # each alone misses (0.02 < 0.05, 0.06 * 0.6 < 0.05); together 0.02 + 0.06 * |ref| >= 0.056: allclose adds them
    assert main(_compare(files, "--atol", "0.02")) == main(_compare(files, "--rtol", "0.06")) == 1
    assert main(_compare(files, "--atol", "0.02", "--rtol", "0.06")) == 0
    capsys.readouterr()
    # 0.01 + 0.03 * |ref| < 0.05 everywhere (|ref| < 1): the worst element is where |ref| is smallest
    assert main(_compare(files, "--atol", "0.01", "--rtol", "0.03")) == 1
    [fail] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    ref = float(inputs[:, 3].min())
    assert fail.startswith(f"FAIL probs: abs diff 0.05 > --atol 0.01 + --rtol 0.03 * |ref {ref:.3g}| = ")


def test_the_tolerance_counts_as_numpy_isclose_batch_by_batch() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 40))
    cand = ref + rng.normal(scale=0.02, size=ref.shape)
    for atol, rtol in [(0.01, 0.0), (0.0, 0.05), (0.01, 0.02), (0.0, 0.0)]:
        acc = ToleranceAccumulator(atol, rtol)
        for r, c in zip(ref, cand, strict=True):  # five batches
            acc.add(r, c)
        result = acc.result()
        assert result.elements == ref.size
        assert result.violations == int((~np.isclose(cand, ref, rtol=rtol, atol=atol)).sum())
        with np.errstate(divide="ignore"):
            excess = np.abs(cand - ref) / (atol + rtol * np.abs(ref))
        i = int(np.argmax(excess))
        assert (result.worst_diff, result.worst_reference) == (abs(cand.flat[i] - ref.flat[i]), ref.flat[i])


def test_identical_non_finite_values_agree_and_one_sided_ones_break_any_tolerance() -> None:
    acc = ToleranceAccumulator(1.0, 1e9)
    acc.add(np.array([np.nan, np.inf, -np.inf, 1.0, np.inf]), np.array([np.nan, np.inf, -np.inf, np.nan, 5.0]))
    result = acc.result()
    assert result.violations == 2 and result.worst_diff == math.inf  # 1 vs NaN, and inf vs 5 (whatever rtol)


def test_min_snr_compares_the_measured_snr(files, inputs, capsys) -> None:
    snr, _ = _expected(inputs)
    assert main(_compare(files, "--min-snr", f"{snr + 1:.1f}")) == 1
    [fail] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    found = re.fullmatch(r"FAIL probs: SNR ([\d.]+) dB < --min-snr ([\d.]+)", fail)
    assert found, fail
    assert float(found.group(1)) == pytest.approx(snr, abs=0.01) and float(found.group(2)) == round(snr + 1, 1)
    assert main(_compare(files, "--min-snr", f"{snr - 1:.1f}")) == 0  # total is exact: SNR inf


def test_min_top1_checks_classifier_shaped_outputs_only(files, inputs, capsys) -> None:
    _, top1 = _expected(inputs)
    assert 0 < top1 < 1  # the offset flips some rows' arg-max: something to check
    assert main(_compare(files, "--min-top1", "1")) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert fails == [f"FAIL probs: top-1 agreement {top1:.4f} < --min-top1 1"]  # total ([N, 1]) is not checked
    assert main(_compare(files, "--min-top1", f"{top1:.6f}")) == 0
    assert "(--min-top1 on the classifier-shaped: probs)" in capsys.readouterr().out
    # no output where top-1 is defined: a check that could not fail is refused, not passed
    args = ["compare", str(files["sums"]), str(files["sums"]), "--data", str(files["data"]), "--min-top1", "0.9"]
    assert "--min-top1 0.9: no output is classifier-shaped" in one_line_error(args, capsys)


def test_an_output_missing_several_thresholds_is_one_line(files, capsys) -> None:
    assert main(_compare(files, "--atol", "0.01", "--min-top1", "1", "--min-snr", "200")) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL probs: max abs diff 0.05 > --atol 0.01")
    assert "; SNR " in fails[0] and "; top-1 agreement " in fails[0]


def test_json_stays_json_and_carries_the_verdict(files, capsys) -> None:
    assert main(_compare(files, "--atol", "0.01", "--json")) == 1
    captured = capsys.readouterr()
    comparison = json.loads(captured.out)["comparison"]
    assert comparison["passed"] is False and comparison["thresholds"]["atol"] == 0.01
    [failure] = comparison["failures"]
    assert (failure["output"], failure["check"], failure["threshold"]) == ("probs", "atol", 0.01)
    assert failure["measured"] == pytest.approx(OFFSET, rel=1e-5)
    assert "FAIL probs: max abs diff 0.05 > --atol 0.01" in captured.err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--atol", "-0.1"], "--atol must be 0 or more, not -0.1"),
        (["--rtol", "-1"], "--rtol must be 0 or more, not -1"),
        (["--min-top1", "1.5"], "--min-top1 is a fraction of samples, in [0, 1], not 1.5"),
        (["--min-top1", "-0.5"], "--min-top1 is a fraction of samples, in [0, 1], not -0.5"),
        (["--min-snr", "nan"], "--min-snr must be a finite number, not nan"),
    ],
)
def test_impossible_thresholds_are_one_line_and_exit_2(flags, expected, files, capsys) -> None:
    assert expected in one_line_error(_compare(files, *flags), capsys)


def test_a_threshold_that_is_no_number_is_a_usage_error(files, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(_compare(files, "--atol", "big"))
    assert stopped.value.code == 2
    assert "onnxopt: error: compare: argument --atol: invalid float value: 'big'" in capsys.readouterr().err


def test_the_api_returns_the_verdict_and_the_failures(files, inputs) -> None:
    data = {"x": inputs}
    ref, cand = onnx.load(str(files["ref"])), onnx.load(str(files["cand"]))
    failed = onnxopt.compare(ref, cand, data=data, atol=0.01, rtol=0.0)
    assert failed.passed is False and failed.thresholds == Thresholds(atol=0.01, rtol=0.0)
    [failure] = failed.failures
    assert (failure.output, failure.check, failure.threshold) == ("probs", "atol+rtol", 0.01)
    assert failure.measured == pytest.approx(OFFSET, rel=1e-5)
    passed = onnxopt.compare(ref, cand, data=data, atol=0.06, min_top1=0.5)
    assert passed.passed is True and passed.failures == []
    for bad in ({"atol": -1.0}, {"min_top1": 2.0}, {"min_snr": math.inf}):
        with pytest.raises(OnnxoptError):
            onnxopt.compare(ref, cand, data=data, **bad)


def test_the_markdown_report_says_how_the_check_went(files, tmp_path, capsys) -> None:
    report = tmp_path / "check.md"
    assert main(_compare(files, "--atol", "0.01", "--report", str(report))) == 1
    text = report.read_text()
    assert "**Check failed** (atol 0.01):" in text and "`probs`: max abs diff 0.05 > --atol 0.01" in text
    assert main(_compare(files, "--atol", "0.06", "--report", str(report))) == 0
    assert "**Check passed**: every output meets atol 0.06." in report.read_text()
