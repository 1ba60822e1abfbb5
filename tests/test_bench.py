"""Benchmark: statistics, providers, the interleaved runner, and the `bench` command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import BUNDLED, parse
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt.bench import BenchConfig, LatencyStats, benchmark, median_ratio
from onnxopt.bench.providers import resolve
from onnxopt.bench.run import distinct_names
from onnxopt.cli import main
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.report.plots import wrap_path

MODEL = BUNDLED / "model.onnx"
QUICK = BenchConfig(runs=12, warmup=1, memory=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=200))
def test_percentiles_are_ordered(seconds: list[float]) -> None:
    stats = LatencyStats.of(seconds, batch=4)
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.runs == len(seconds)
    assert stats.throughput == pytest.approx(4 / (np.mean(seconds)))


def test_ratio_of_a_scaled_series_and_its_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 1.2, 400)
    same = median_ratio(base, base)
    assert same.median == 1.0 and same.low == 1.0 and same.high == 1.0
    slower = median_ratio(base, base * 1.5 + rng.normal(0, 0.01, 400))
    assert slower.low <= slower.median <= slower.high
    assert slower.low > 1.45 and slower.high < 1.55


def test_ratio_needs_paired_rounds() -> None:
    with pytest.raises(ValueError):
        median_ratio([1.0, 2.0], [1.0])


def test_unavailable_provider_lists_the_available_ones() -> None:
    assert resolve(["cpu"]) == ["CPUExecutionProvider"]
    missing = "tensorrt" if "TensorrtExecutionProvider" not in ort.get_available_providers() else "nonsense"
    with pytest.raises(OnnxoptError, match=r"not available here \(available: .*cpu"):
        resolve([missing])


def test_bench_two_models_interleaved(tmp_path) -> None:
    copy = tmp_path / "copy.onnx"
    shutil.copy(MODEL, copy)
    result = benchmark([MODEL, copy], BenchConfig(runs=30, warmup=2, batches=(1, 4)))
    assert [(m.model, m.batch) for m in result.measurements] == [
        ("model.onnx", 1),
        ("copy.onnx", 1),
        ("model.onnx", 4),
        ("copy.onnx", 4),
    ]
    for m in result.measurements:
        lat = m.latency
        assert lat.runs == 30
        assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms
        assert m.session_s > 0
        assert m.file_bytes == MODEL.stat().st_size
        assert m.peak_rss_bytes is not None and m.peak_rss_bytes >= m.file_bytes
        if m.session_bytes is not None:  # Linux: the session's own cost, which holds the weights
            assert m.session_bytes >= m.file_bytes
        assert (m.ratio is None) == (m.model == "model.onnx")
    ratio = result.measurements[1].ratio
    assert ratio is not None and ratio.low <= ratio.median <= ratio.high
    assert 0.5 < ratio.median < 2.0  # the same model: nowhere near a real difference
    assert json.dumps(result.to_dict(), default=str)


def test_fixed_batch_model_refuses_another_batch(tmp_path) -> None:
    model = parse('<ir_version: 8, opset_import: ["": 13]> g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }')
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    assert benchmark([path], QUICK).measurements[0].batch == 1
    with pytest.raises(DataError, match="fixed batch dimension of 1; --batch 8 is impossible"):
        benchmark([path], BenchConfig(runs=2, batches=(8,), memory=False))


def test_models_with_different_inputs_are_refused(tmp_path) -> None:
    model = parse('<ir_version: 8, opset_import: ["": 13]> g (float[N, 3] z) => (float[N, 3] y) { y = Relu(z) }')
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    with pytest.raises(DataError, match="differ from the baseline"):
        benchmark([MODEL, path], QUICK)


def test_bench_uses_the_data(tmp_path) -> None:
    from onnxopt.api import bench_files

    result = bench_files(
        [MODEL], BenchConfig(runs=3, warmup=0, batches=(2000,), memory=False), data=str(BUNDLED / "eval.npz")
    )
    assert result.measurements[0].batch == 2000  # 1000 samples, repeated to fill the batch
    assert result.data.endswith("eval.npz")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", str(MODEL), "--ep", "nonsense"], "execution provider 'nonsense' is not available"),
        (["bench", "missing.onnx"], "missing.onnx: no such file"),
        (["bench", str(MODEL), "--batch", "0"], "--batch 0: expected positive integers"),
        (["bench", str(MODEL), "--batches", "0"], "--batches 0: expected positive integers"),
        (["bench", str(MODEL), "--batches", "1", "--batch", "2"], "--batch is the old name of --batches"),
        (["compare", str(MODEL), str(MODEL), "--chunk", "0"], "--chunk must be positive"),
        (["compare", str(MODEL), str(MODEL), "--batch", "0"], "--batch must be positive"),
        (["bench", str(MODEL), "--runs", "1"], "--runs must be at least 2"),
        (["bench", str(MODEL), "--report", "x.txt"], "report must end in"),
    ],
)
def test_bench_bad_input_is_one_line_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_command_json_and_report(tmp_path, capsys) -> None:
    report = tmp_path / "bench.md"
    argv = ["bench", str(MODEL), str(MODEL), "--runs", "5", "--warmup", "0", "--no-memory", "--json"]
    assert main([*argv, "--report", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "bench"
    assert len(printed["bench"]["measurements"]) == 2
    assert "p50" in report.read_text()


def test_distinct_names_add_folders_until_names_differ_and_never_shorten(tmp_path) -> None:
    long = "ch_ppocr_mobile_v2.0_cls_infer"
    assert distinct_names([f"/m/a/{long}.onnx", f"/m/b/{long}_int8.onnx"]) == [f"{long}.onnx", f"{long}_int8.onnx"]
    assert distinct_names(["/m/a/x.onnx", "/m/b/x.onnx", "/n/b/x.onnx", "/x.onnx", "/m/y.onnx"]) == [
        "a/x.onnx",
        "m/b/x.onnx",
        "n/b/x.onnx",
        "/x.onnx",
        "y.onnx",
    ]
    assert distinct_names(["/m/x.onnx", "/m/x.onnx"]) == ["x.onnx", "x.onnx (2)"]  # one file, twice
    relative = tmp_path / "r" / "x.onnx"
    assert distinct_names([relative, tmp_path / "s" / "x.onnx"]) == ["r/x.onnx", "s/x.onnx"]


def test_bench_table_keeps_long_names_whole_and_distinct(tmp_path, capsys) -> None:
    model = parse('<ir_version: 8, opset_import: ["": 13]> g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }')
    name = "ch_ppocr_mobile_v2.0_cls_infer_with_a_long_name.onnx"
    paths = [tmp_path / "first" / name, tmp_path / "second" / name]
    for path in paths:
        path.parent.mkdir()
        onnx.save(model, str(path))
    assert main(["bench", *map(str, paths), "--runs", "2", "--warmup", "0", "--no-memory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if name in line]
    assert [row.split()[0] for row in rows] == [f"first/{name}", f"second/{name}"]
    header = next(line for line in lines if line.startswith("model"))
    assert header.index("p50 ms") > len(f"second/{name}")  # the column is as wide as the longest name
    assert "random inputs: x float32[1,3]" in lines


def test_latency_chart_labels_wrap_whole() -> None:
    label = "second/ch_ppocr_mobile_v2.0_cls_infer_int8.onnx"
    wrapped = wrap_path(label, 28)
    assert wrapped.replace("\n", "") == label and "\n" in wrapped
    assert all(len(line) <= 28 for line in wrapped.splitlines())
    assert wrap_path("m.onnx") == "m.onnx"


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider here")
def test_bench_on_cuda_with_io_binding() -> None:
    result = benchmark([MODEL], BenchConfig(providers=("cuda",), runs=20, batches=(1, 32), memory=False))
    for m in result.measurements:
        assert m.provider == "cuda" and m.active_providers[0] == "CUDAExecutionProvider"
        assert m.latency.p50_ms <= m.latency.p99_ms
