"""Reports: the JSON schema, Markdown and HTML renderings, plots, and `onnxopt report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import BUNDLED

from onnxopt.cli import main
from onnxopt.report import SCHEMA, plots

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two optimize runs with reports (one with per-layer error), written once for the module."""
    folder = tmp_path_factory.mktemp("reports")
    common = ["--data", str(EVAL), "--bench-seconds", "0.2"]
    assert (
        main(
            [
                "optimize",
                str(MODEL),
                "-o",
                str(folder / "a.onnx"),
                *common,
                "--per-layer",
                "--report",
                str(folder / "a.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "optimize",
                str(MODEL),
                "-o",
                str(folder / "b.onnx"),
                "--passes",
                "fold-bn",
                *common,
                "--report",
                str(folder / "b.json"),
            ]
        )
        == 0
    )
    return {"a": folder / "a.json", "b": folder / "b.json", "folder": folder}


def test_optimize_report_schema(reports: dict[str, Path]) -> None:
    data = json.loads(reports["a"].read_text())
    assert data["schema"] == SCHEMA and data["kind"] == "optimize"
    assert data["machine"]["cores"] >= 1
    latency = data["latency"]["measurements"]
    assert [m["model"] for m in latency] == ["model.onnx", "a.onnx"]
    for m in latency:
        assert m["latency"]["p50_ms"] <= m["latency"]["p90_ms"] <= m["latency"]["p99_ms"]
        assert m["peak_rss_bytes"] >= m["file_bytes"]
    assert latency[0]["ratio"] is None and latency[1]["ratio"]["low"] <= latency[1]["ratio"]["high"]
    layers = data["comparison"]["layers"]
    assert layers["first_bad"] is None and len(layers["layers"]) > 5  # lossless: no layer breaks


def test_html_and_markdown_say_the_same(reports: dict[str, Path], tmp_path: Path) -> None:
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    assert main(["report", str(reports["a"]), "-o", str(html)]) == 0
    assert main(["report", str(reports["a"]), "-o", str(md)]) == 0
    page, text = html.read_text(), md.read_text()
    for heading in ("Outputs against the reference", "Latency", "Per-layer error", "Passes"):
        assert heading in page and f"## {heading}" in text
    assert "<svg" not in text
    assert plots.available()  # matplotlib is a core dependency: the plain install draws the figures
    assert page.count("<svg") >= 3  # latency bars, trade-off, per-layer SNR


def test_report_compares_runs(reports: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(reports["a"]), str(reports["b"])]) == 0
    text = capsys.readouterr().out
    assert "# onnxopt: runs compared" in text
    assert str(reports["a"]) in text and str(reports["b"]) in text
    assert "| optimize |" in text and "fold-bn" in text


def test_bench_and_compare_reports_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench, cmp = tmp_path / "bench.json", tmp_path / "cmp.json"
    assert main(["bench", str(MODEL), "--runs", "3", "--no-memory", "--report", str(bench)]) == 0
    assert main(["compare", str(MODEL), str(MODEL), "--per-layer", "--report", str(cmp)]) == 0
    capsys.readouterr()
    assert json.loads(cmp.read_text())["comparison"]["layers"]["first_bad"] is None
    assert main(["report", str(bench), str(cmp)]) == 0
    text = capsys.readouterr().out
    assert "| bench |" in text and "| compare |" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such report"),
        ("not json", "not a JSON report"),
        ('{"schema": "something/1"}', f"not an {SCHEMA} report"),
    ],
)
def test_report_refuses_what_is_not_a_report(
    tmp_path: Path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
