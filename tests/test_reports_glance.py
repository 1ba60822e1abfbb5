"""The HTML report at a glance: latency intervals, axes from 0, what each count and size row counts, and a tune
table that wraps. Structural checks on the rendered SVG/HTML/Markdown, never pixels."""

from __future__ import annotations

import json
import re
from typing import Any

import onnx
import pytest
from helpers import BUNDLED

from onnxopt.cli import main
from onnxopt.report import format_report

MODEL, EVAL = BUNDLED / "model.onnx", BUNDLED / "eval.npz"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One int8 run (fold-bn, then quantize with its defaults: nothing timed) with a benchmark, its report
    loaded; the written model's path under ``"model"``."""
    folder = tmp_path_factory.mktemp("glance")
    out, report = folder / "q.onnx", folder / "q.json"
    args = ["optimize", str(MODEL), "-o", str(out), "--passes", "fold-bn,quantize", "--data", str(EVAL)]
    assert main([*args, "--bench-seconds", "0.2", "--report", str(report)]) == 0
    return {**json.loads(report.read_text()), "model": str(out)}


def _figures(page: str) -> dict[str, str]:
    """The HTML report's figures: caption -> SVG."""
    return {caption: svg for svg, caption in re.findall(r"<figure>(.*?)<figcaption>(.*?)</figcaption>", page, re.S)}


def _tick_labels(svg: str, axis: str) -> list[float]:
    """The tick labels of matplotlib's ``axis`` (``x`` or ``y``) in an SVG, as numbers (its text is drawn as
    paths, with the label in a comment)."""
    labels = re.findall(rf'<g id="{axis}tick_\d+">.*?<!-- (.*?) -->', svg, re.S)
    return [float(label.replace("\u2212", "-")) for label in labels]


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after the line starting with ``heading`` in a Markdown report."""
    after = f"\n{markdown}".split(f"\n{heading}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    end = next((i for i, line in enumerate(after[start:], start) if not line.startswith("|")), len(after))
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in after[start + 2 : end]]


def test_latency_bars_show_the_median_and_its_interval_not_p90(quantized: dict[str, Any]) -> None:
    page = format_report([quantized], ".html")
    (caption, svg), *_ = ((c, s) for c, s in _figures(page).items() if c.startswith("latency, cpu"))
    base, cand = quantized["latency"]["measurements"]
    assert base["ratio"] is None and cand["ratio"] is not None
    assert 'id="latency-interval-1"' in svg and 'id="latency-interval-0"' not in svg  # the baseline has no ratio
    ratio = cand["ratio"]
    assert f"<!-- {ratio['median']:.3f}x [{ratio['low']:.3f}, {ratio['high']:.3f}] -->" in svg
    assert "<!-- latency p50 (ms) -->" in svg and "p90" not in svg and "95 % interval" in caption
    assert _tick_labels(svg, "y")[0] == 0  # bars from 0


def test_tradeoff_latency_axis_starts_at_zero(quantized: dict[str, Any]) -> None:
    page = format_report([quantized], ".html")
    (svg,) = (s for c, s in _figures(page).items() if c.startswith("accuracy against latency"))
    ticks = _tick_labels(svg, "x")
    assert ticks[0] == 0 and len(ticks) >= 3  # the axis from 0, not zoomed onto the two models
    assert 'id="latency-interval-1"' in svg  # the candidate's interval, as a horizontal whisker


def test_plan_and_passes_tables_count_the_same_weights(quantized: dict[str, Any]) -> None:
    text = format_report([quantized], ".md")
    (passes,) = [row for row in _table_rows(text, "## Passes") if row[0] == "quantize"]
    (plan,) = [row for row in _table_rows(text, "## Plan") if row[1] == "quantize"]
    weights = plan[5]
    found = re.fullmatch(r"weights quantized: (\d+)", weights)
    assert found and weights in passes[6].split(", ")  # the same count under the same label in both tables
    model = onnx.load(quantized["model"])
    stored = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert int(found.group(1)) == len(stored) > 0  # and it is what the written model holds
    (entry,) = quantized["plan"]["passes"].values()
    nodes = len(entry["nodes"])
    assert plan[4] == f"{nodes} nodes int8 compute" and nodes > len(stored)  # nodes, labelled as nodes, not weights
    assert "weights" not in plan[4] and "nodes" not in weights


def test_size_rows_say_what_they_count(quantized: dict[str, Any]) -> None:
    rows = {row[0]: row for row in _table_rows(format_report([quantized], ".md"), "# onnxopt report")}
    tensor = next(row for label, row in rows.items() if label.startswith("tensor bytes ("))
    on_disk = next(row for label, row in rows.items() if label.startswith("file bytes (on disk"))
    assert "bytes" not in rows and "file bytes" not in rows  # no bare label left to guess at
    assert int(tensor[1].replace(",", "")) == quantized["before"]["bytes"]
    assert int(on_disk[2].replace(",", "")) == quantized["output"]["file_bytes"]


def _tune_report(shared: str, tails: list[str]) -> dict[str, Any]:
    """A tune report (kind ``tune``) whose trials' recipes are ``shared`` followed by each of ``tails``."""
    trials = [
        {"name": f"trial {i}", "status": "ok", "drop": 0.001 * i, "size_bytes": 1000 - 100 * i, "macs": 10,
         "seconds": 1.0, "spec": ",".join(filter(None, [shared, tail])), "latency_ratio": 0.9 if i < 2 else None}
        for i, tail in enumerate(tails)
    ]  # fmt: skip
    trials[1]["chosen"] = True
    return {
        "schema": "onnxopt.report/2", "kind": "tune", "created": "2026-01-01T00:00:00+00:00",
        "versions": {"onnxopt": "0"}, "input": {"path": "m.onnx", "file_bytes": 1000},
        "output": {"path": "t.onnx", "recipe": "t.recipe.yaml", "plan": "t.plan.json"},
        "objective": "balanced", "max_drop": 0.01, "split": {"counts": [6, 2, 2]},
        "held_out": {"metric": "accuracy", "value": 0.9, "baseline": 0.9, "drop": 0.0, "within_budget": True,
                     "size_ratio": 0.9, "samples": 2},
        "chosen": {**trials[1], "recipe": None}, "trials": trials, "notes": [], "reproduce": [],
    }  # fmt: skip


def test_tune_table_states_the_shared_passes_once_and_wraps_recipes() -> None:
    shared = "remove-initializer-inputs,fold-constants,eliminate-identity,fold-bn:standalone=keep,topo-sort"
    tails = ["", "quantize:calibration=percentile;rounding=gptq;activations=uint8", "prune-channels:ratio=0.5"]
    report = _tune_report(shared, tails)
    text = format_report([report], ".md")
    rows = _table_rows(text, "## Trials")
    assert [row[8] for row in rows] == ["… (the shared passes only)", f"… `{tails[1]}`", f"… `{tails[2]}`"]
    assert text.split("## Trials", 1)[1].count(shared) == 1  # said once above the table, not in every row
    page = format_report([report], ".html")
    assert "quantize:calibration=percentile;<wbr>rounding=gptq;<wbr>activations" in page  # may break between parameters
    assert "td code{overflow-wrap:anywhere}" in page  # and inside an unbreakable name, never widening the page
    (svg,) = (s for c, s in _figures(page).items() if c.startswith("Every finished trial"))
    x, y = _tick_labels(svg, "x"), _tick_labels(svg, "y")
    assert x[0] == 0 and x[-1] >= 1.0 and min(y) <= 0 <= max(y)  # size ratio from 0 past 1; no drop on it


def test_tune_table_without_a_shared_prefix_shows_whole_recipes() -> None:
    report = _tune_report("", ["lossless", "int8"])
    rows = _table_rows(format_report([report], ".md"), "## Trials")
    assert [row[8] for row in rows] == ["`lossless`", "`int8`"]


def test_details_of_several_kinds_are_one_table_each(quantized: dict[str, Any]) -> None:
    report = json.loads(json.dumps(quantized))
    (record,) = [r for r in report["passes"] if r["name"] == "quantize"]
    record["details"] = [{"epoch": 1, "loss": 0.5}, {"node": "conv", "added_db": 1.5}, {"epoch": 2, "loss": 0.25}]
    section = format_report([report], ".md").split("### quantize: per layer", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]  # headers and rows, not rules
    assert lines == ["| epoch | loss |", "| 1 | 0.5 |", "| 2 | 0.25 |", "| node | added_db |", "| conv | 1.5 |"]


def test_tune_table_shows_each_trials_verdict_not_whether_it_finished() -> None:
    """A finished trial over the budget has status ``ok`` (it ran) and verdict ``over``: the table shows the
    verdict and its why, so a drop of 0.011 under a 0.01 budget never reads ``ok``."""
    report = _tune_report("", ["lossless", "int8", "prune"])
    report["trials"][2].update(drop=0.011, verdict="over", why="drop 0.011 > --max-drop 0.01")
    report["trials"][0].update(verdict="ok", why="within budget; score 0.9 vs the chosen's 0.4")
    rows = _table_rows(format_report([report], ".md"), "## Trials")
    assert [row[1] for row in rows] == ["ok", "ok", "over"]  # trial 1 has no verdict: an older file, its status
    assert rows[2][9] == "drop 0.011 > --max-drop 0.01" and rows[0][9].startswith("within budget")
