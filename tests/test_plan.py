"""Plans: --save-plan writes every measured decision, --plan replays them without timing anything, and the same
input, recipe, seed and plan give byte-identical output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.api import optimize
from onnxopt.cli import main
from onnxopt.optimizer.context import Context
from onnxopt.optimizer.plan import Plan, PlanError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from mobilenet_like import INPUT_SHAPE, mobilenet_like

RECIPE = "quantize:fallback=profile;bias_correct=true"


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("plan")
    model = folder / "m.onnx"
    onnx.save(mobilenet_like(rng.standard_normal((16, *INPUT_SHAPE), dtype=np.float32)), str(model))
    data = folder / "data.npz"
    np.savez(data, input=rng.standard_normal((64, *INPUT_SHAPE), dtype=np.float32))
    return model, data


def _refuse(why: str):
    def refuse(*args, **kwargs):
        raise AssertionError(why)

    return refuse


def _no_timing(monkeypatch) -> None:
    monkeypatch.setattr(Context, "profiles", _refuse("a replayed plan timed something"))
    monkeypatch.setattr(Context, "latency_ratio", _refuse("a replayed plan timed something"))


def test_plan_replays_the_same_bytes_without_timing(subject, tmp_path, monkeypatch) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    first = optimize(model, tmp_path / "a.onnx", passes=RECIPE, data=str(data), save_plan=plan)
    assert any("were timed on this machine" in n and "saved to" in n for n in first.pipeline.notes)
    saved = json.loads(plan.read_text())
    entry = saved["passes"]["0"]
    assert entry["pass"] == "quantize" and entry["timed"] is True
    assert set(entry["nodes"].values()) <= {"int8", "float", "float compute, int8 weights"}
    assert entry["calibration"]["ranges"] and "int8_over_float" in entry["measured"]
    assert "cpu_features" in saved["machine"]
    assert first.plan == Plan.load(plan).to_dict(bulky=False)  # the plan is in the report too, without its data
    calibration = saved["passes"]["0"]["calibration"]
    assert first.plan["passes"]["0"]["calibration"]["in_the_saved_plan"] == {
        "means": len(calibration["means"]),
        "learned_rounding": len(calibration["learned_rounding"]),
    }

    _no_timing(monkeypatch)
    second = optimize(model, tmp_path / "b.onnx", passes=RECIPE, data=str(data), plan=plan)
    third = optimize(model, tmp_path / "c.onnx", passes=RECIPE, data=str(data), plan=plan)
    assert any("replayed from" in n and "nothing timed" in n for n in second.pipeline.notes)
    a, b, c = ((tmp_path / f"{x}.onnx").read_bytes() for x in "abc")
    assert a == b == c
    assert third.pipeline.records[0].status == first.pipeline.records[0].status


def test_plan_for_another_model_recipe_or_seed_is_refused(subject, tmp_path) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    optimize(model, tmp_path / "a.onnx", passes=RECIPE, data=str(data), save_plan=plan)
    with pytest.raises(PlanError, match="another recipe"):
        optimize(model, tmp_path / "b.onnx", passes="quantize", data=str(data), plan=plan)
    with pytest.raises(PlanError, match="--seed 0, not 1"):
        optimize(model, tmp_path / "b.onnx", passes=RECIPE, data=str(data), plan=plan, seed=1)
    other = tmp_path / "other.onnx"
    other.write_bytes(model.read_bytes() + b"\n")  # not the same file
    with pytest.raises(PlanError, match="another input file"):
        optimize(other, tmp_path / "b.onnx", passes=RECIPE, data=str(data), plan=plan)
    assert not (tmp_path / "b.onnx").exists()


def test_cli_plan_errors_are_one_line(subject, tmp_path, capsys) -> None:
    model, _ = subject
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    code = main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", RECIPE, "--plan", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not an onnxopt plan" in err and len(err.splitlines()) == 1
    code = main(
        ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", RECIPE, "--save-plan", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is a directory" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def _no_guard(monkeypatch) -> None:
    from onnxopt.optimizer.pipeline import Pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a verified replay ran the guard")

    monkeypatch.setattr(Pipeline, "_guard", staticmethod(refuse))


def test_replay_of_the_planned_model_carries_the_plans_measurements(subject, tmp_path, monkeypatch) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    first = optimize(model, tmp_path / "a.onnx", recipe="int8", data=str(data), save_plan=plan)
    verification = json.loads(plan.read_text())["verification"]
    assert len(verification["model_sha256"]) == 64 and verification["comparison"]["samples"] == 64

    calibration = next(e for e in json.loads(plan.read_text())["passes"].values() if e["pass"] == "quantize")[
        "calibration"
    ]
    assert calibration["learned_rounding"] and calibration["means"] and len(calibration["graph_digest"]) == 64

    _no_guard(monkeypatch)
    _no_timing(monkeypatch)
    monkeypatch.setattr(Context, "activations", _refuse("a replay ran calibration"))
    second = optimize(model, tmp_path / "b.onnx", recipe="int8", data=str(data), plan=plan)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert second.pipeline.carried and any("is the planned one" in n for n in second.pipeline.notes)
    quantize = next(r for r in second.pipeline.records if r.name == "quantize")
    assert any("calibration replayed from the plan" in n for n in quantize.notes)
    assert second.comparison.to_dict() == first.comparison.to_dict()
    assert [r.max_drift for r in second.pipeline.records] == [r.max_drift for r in first.pipeline.records]
    assert [r.details for r in second.pipeline.records] == [r.details for r in first.pipeline.records]


def test_replay_that_does_not_rebuild_the_planned_model_is_measured_again(subject, tmp_path) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    first = optimize(model, tmp_path / "a.onnx", passes=RECIPE, data=str(data), save_plan=plan)
    saved = json.loads(plan.read_text())
    saved["verification"]["model_sha256"] = "0" * 64  # as if another onnxruntime had built another model
    plan.write_text(json.dumps(saved))
    second = optimize(model, tmp_path / "b.onnx", passes=RECIPE, data=str(data), plan=plan)
    assert not second.pipeline.carried
    assert any("replay not verified by the plan (the rebuilt model differs" in n for n in second.pipeline.notes)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert second.comparison.samples == first.comparison.samples  # measured, not taken from the plan

    other = tmp_path / "other.npz"  # other data: the guard's digest differs, so the replay is guarded throughout
    rng = np.random.default_rng(5)
    np.savez(other, input=rng.standard_normal((64, *INPUT_SHAPE), dtype=np.float32))
    third = optimize(model, tmp_path / "c.onnx", passes=RECIPE, data=str(other), plan=plan)
    assert not third.pipeline.carried and third.pipeline.guard_outputs is not None


def test_a_malformed_verification_is_a_one_line_plan_error(subject, tmp_path, capsys) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    optimize(model, tmp_path / "a.onnx", passes=RECIPE, data=str(data), save_plan=plan)
    saved = json.loads(plan.read_text())
    saved["verification"]["comparison"] = {"samples": 1}  # no outputs
    plan.write_text(json.dumps(saved))
    with pytest.raises(PlanError, match="malformed plan"):
        optimize(model, tmp_path / "b.onnx", passes=RECIPE, data=str(data), plan=plan)
    code = main(["optimize", str(model), str(tmp_path / "b.onnx"), "--passes", RECIPE, "--data", str(data),
                 "--plan", str(plan)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "malformed plan" in err[0]
    assert not (tmp_path / "b.onnx").exists()


def test_calibration_learned_on_another_graph_is_computed_again(subject, tmp_path) -> None:
    model, data = subject
    plan = tmp_path / "plan.json"
    optimize(model, tmp_path / "a.onnx", recipe="int8", data=str(data), save_plan=plan)
    saved = json.loads(plan.read_text())
    entry = next(e for e in saved["passes"].values() if e["pass"] == "quantize")
    entry["calibration"]["graph_digest"] = "0" * 64  # as if an earlier pass had rewritten the graph differently
    plan.write_text(json.dumps(saved))
    second = optimize(model, tmp_path / "b.onnx", recipe="int8", data=str(data), plan=plan)
    quantize = next(r for r in second.pipeline.records if r.name == "quantize")
    assert any("calibrated again: the plan's calibration was learned on another graph" in n for n in quantize.notes)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()  # same data: same levels
