"""What ``onnxopt tune`` tells a person: the trial table (every trial with a verdict and why; a drop over the budget
never ``ok``), the rebuild command naming the files beside the output, a recipe file with numbers as numbers,
defaults in ``--help``, and the trial cache in the user's cache folder unless ``--cache`` names one."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from onnxopt.optimizer.recipe import BUILTIN_RECIPES, build_passes, load_recipe, parse_spec
from onnxopt.tune import TuneOptions, tune
from onnxopt.tune.cache import default_folder
from onnxopt.tune.run import recipe_yaml
from onnxopt.tune.space import Point, with_budget
from onnxopt.tune.trial import TrialRecord, judge, within_budget

MODELS = Path(__file__).resolve().parent.parent / "models"
DIGITS = MODELS / "digits_cnn" / "model.onnx"
#: the cheapest tune the tune tests run: the lossless built-in and one sampled trial, no distillation
SMALL = {"max_drop": 0.02, "trials": 1, "builtins": ("lossless",), "distill": False, "seed": 3, "workers": 1}
BESIDE = ("tuned.onnx", "tuned.recipe.yaml", "tuned.plan.json", "tuned.fit.npz", "tuned.held-out.npz")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One tune without --cache (HOME and XDG_CACHE_HOME in a temporary folder), its data in another folder than
    its output: (result, output folder, the XDG cache home, the data file)."""
    root = tmp_path_factory.mktemp("tune-output")
    data, out, xdg = root / "data", root / "out", root / "xdg"
    data.mkdir(), out.mkdir()
    with np.load(MODELS / "digits_cnn" / "train.npz") as archive:
        np.savez(data / "digits400.npz", **{k: archive[k][:400] for k in archive.files})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))
        patch.setenv("XDG_CACHE_HOME", str(xdg))
        options = TuneOptions(data=(str(data / "digits400.npz"),), **SMALL)
        [result] = tune([str(DIGITS)], str(out / "tuned.onnx"), options)
    return result, out, xdg, data / "digits400.npz"


def _record(drop: float, **fields) -> TrialRecord:  # type: ignore[no-untyped-def]
    return TrialRecord("trial 1", "fold-bn", {}, "ok", drop=drop, **fields)


@pytest.mark.parametrize(
    ("drop", "verdict", "why"),
    [
        (0.011, "over", "drop 0.011 > --max-drop 0.01"),  # the drop a user saw shown ok
        (0.0101, "over", "drop 0.0101 > --max-drop 0.01"),  # not written "0.010 > 0.01"
        (0.01 + 1e-6, "over", "drop 0.010001 > --max-drop 0.01"),
        (0.01, "ok", "within budget"),
        (0.93 - 0.92, "ok", "within budget"),  # 0.010000000000000009: 10 of 1000 samples, exactly the budget
        (0.0099, "ok", "within budget"),
        (-0.02, "ok", "within budget"),
    ],
)
def test_the_verdict_follows_the_drop_at_the_budget_boundary(drop: float, verdict: str, why: str) -> None:
    assert judge(_record(drop), 0.01) == (verdict, why + "; not among the finalists timed" * (verdict == "ok"))
    assert within_budget(drop, 0.01) == (verdict == "ok")
    # a record that says feasible, finalist and chosen (as a stale cache entry could) is still judged by its drop
    stale = _record(drop, feasible=True, finalist=True, chosen=True, score=0.5)
    assert judge(stale, 0.01)[0] == ("over" if verdict == "over" else "chosen")


def test_every_status_has_a_verdict_and_a_reason() -> None:
    chosen = _record(0.0, finalist=True, chosen=True, score=0.4, latency_ratio=0.7)
    slower = _record(0.005, finalist=True, score=0.9, latency_ratio=1.05)
    pruned = TrialRecord("trial 2", "q", {}, "pruned", rung_drop=0.094, rung_samples=20, pruned="on the first rung")
    failed = TrialRecord("int8", "q", {}, "failed", error="quantize: no data\nsecond line")
    assert judge(chosen, 0.01, chosen) == ("chosen", "within budget; the best score of the finalists timed")
    assert judge(slower, 0.01, chosen) == ("ok", "within budget; not faster (1.05x); score 0.900 vs the chosen's 0.400")
    assert judge(pruned, 0.01, chosen) == (
        "pruned",
        "drop 0.094 on the first 20 samples > --max-drop 0.01 (stopped on the first rung)",
    )
    verdict, why = judge(failed, 0.01, chosen)
    assert verdict == "failed" and why.startswith("quantize: no data") and "\n" not in why


def test_the_recipe_file_writes_numbers_and_booleans_natively(tmp_path) -> None:
    """A sampled point's recipe as tune writes it: YAML numbers and booleans, read back as the same passes."""
    point = Point(
        "trial 1",
        (
            BUILTIN_RECIPES["lossless"] + ",prune-channels:ratio=0.25;importance=l2;multiple=8,reconstruct",
            "equalize,quantize:calibration=minmax;rounding=nearest;activations=uint8;bias_correct=true;"
            "max_drop={max_drop}",
        ),
    )
    spec = with_budget(point, 0.01).spec
    path = tmp_path / "tuned.recipe.yaml"
    path.write_text(recipe_yaml(spec))
    entries = {e["name"]: e for e in yaml.safe_load(path.read_text())["passes"] if isinstance(e, dict)}
    prune, quantize = entries["prune-channels"], entries["quantize"]
    assert prune["ratio"] == 0.25 and type(prune["ratio"]) is float
    assert prune["multiple"] == 8 and type(prune["multiple"]) is int
    assert prune["importance"] == "l2"
    assert quantize["bias_correct"] is True
    assert quantize["max_drop"] == 0.01 and type(quantize["max_drop"]) is float
    assert entries["fold-bn"]["standalone"] == "keep"
    # read back by optimize's recipe loader: the same passes with the same configurations as the spec
    from_file = [(type(p), p.config) for p in build_passes(load_recipe(str(path)))]
    assert from_file == [(type(p), p.config) for p in build_passes(parse_spec(spec))]
    for name in ("int8", "prune+int8"):  # the built-ins' recipes too: nothing numeric left quoted
        text = recipe_yaml(BUILTIN_RECIPES[name])
        assert not re.search(r": '[-+0-9.]+'$|: '(true|false)'$", text, re.MULTILINE), text


def test_the_trial_cache_defaults_to_the_users_cache_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_folder() == tmp_path / "xdg" / "onnxopt" / "tune"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: a relative path is ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_folder() == tmp_path / "home" / ".cache" / "onnxopt" / "tune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_folder() == tmp_path / "home" / ".cache" / "onnxopt" / "tune"


def test_a_trial_key_changes_with_onnxopt_s_code(monkeypatch) -> None:
    # the version string stays 0.1.0 across development builds: a cached trial of older passes must not be reused
    from onnxopt.tune import cache

    key = cache.trial_key("model", "recipe")
    assert key == cache.trial_key("model", "recipe") and len(cache.code_digest()) == 64
    monkeypatch.setattr(cache, "code_digest", lambda: "0" * 64)
    assert cache.trial_key("model", "recipe") != key


def test_tune_help_shows_every_default(capsys) -> None:
    from onnxopt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--eval-data", "--max-drop", "--objective", "--batch", "--trials", "--time-budget", "--ray",
                 "--cache", "--workers", "--seed", "--report"):  # fmt: skip
        entry = re.search(rf"\s{flag} [A-Z|a-z_]+ (.*?)(?= --[a-z-]+ [A-Z|a-z]| examples:)", text)
        assert entry and "default:" in entry.group(1), f"{flag}: {entry and entry.group(1)}"
    assert "(default: 0.01)" in text and "(default: 12)" in text and "(default: balanced)" in text
    assert "~/.cache/onnxopt/tune" in text


def test_a_tune_leaves_its_output_recipe_plan_and_data_beside_it_and_caches_in_the_user_cache(tuned) -> None:
    result, out, xdg, _ = tuned
    assert sorted(p.name for p in out.iterdir()) == sorted(BESIDE)  # no hidden cache folder beside the output
    assert result.cache == xdg / "onnxopt" / "tune" and any(result.cache.iterdir())
    assert result.to_dict()["cache"] == str(result.cache)
    assert result.recipe_file == out / "tuned.recipe.yaml"
    assert result.rebuild_data == (out / "tuned.fit.npz", out / "tuned.held-out.npz")


def test_tune_prints_every_trial_with_its_verdict_and_a_rebuild_naming_the_files_beside_the_output(
    tuned, capsys, monkeypatch
) -> None:
    """The CLI (its tune replaced by the fixture's result) prints one row per trial, each with a verdict and why,
    no drop over the budget shown ok; where the cache is; and a rebuild command with no cache path in it."""
    from onnxopt.cli import main

    result, out, _, data = tuned
    package = importlib.import_module("onnxopt.tune")  # `onnxopt.tune` as an attribute is the API's function
    monkeypatch.setattr(package, "tune", lambda *args, **kwargs: [result])
    assert main(["tune", str(DIGITS), "-o", str(out / "tuned.onnx"), "--data", str(data), "--max-drop", "0.02"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["trial", "recipe", "drop"])
    rows = lines[header + 1 : header + 1 + len(result.trials)]
    assert len(result.trials) == 2
    for trial, row in zip(result.trials, rows, strict=True):
        assert row.startswith(trial.name) and trial.verdict and trial.why and row.endswith(trial.why)
        assert f"  {trial.verdict}  " in row
        over = trial.drop is not None and trial.drop > 0.02
        assert trial.verdict in (("over",) if over else ("ok", "chosen", "pruned", "failed")), row
    assert sum(t.verdict == "chosen" for t in result.trials) == 1
    assert any(line.startswith(f"trial cache: {result.cache} (") for line in lines)
    rebuild = shlex.split(next(line for line in lines if line.startswith("rebuild: "))[len("rebuild: ") :])
    assert rebuild[:4] == ["onnxopt", "optimize", str(DIGITS), str(out / "tuned.onnx")]
    named = dict(zip(rebuild[4::2], rebuild[5::2], strict=True))
    assert named["--recipe"] == str(out / "tuned.recipe.yaml") and named["--plan"] == str(out / "tuned.plan.json")
    assert named["--data"] == str(out / "tuned.fit.npz") and named["--eval-data"] == str(out / "tuned.held-out.npz")
    assert all(Path(named[flag]).is_file() for flag in ("--recipe", "--plan", "--data", "--eval-data"))
    assert not any(str(result.cache) in arg for arg in rebuild)
