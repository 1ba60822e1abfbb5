"""Recipes: CLI strings, files, built-ins, parameter conversion and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxopt.errors import RecipeError
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, build_passes, load_recipe, parse_spec
from onnxopt.passes import REGISTRY


def test_parse_spec_with_parameters() -> None:
    entries = parse_spec("fold-bn, fold-constants:max_input=10;max_output=20 ,topo-sort")
    assert entries == [("fold-bn", {}), ("fold-constants", {"max_input": "10", "max_output": "20"}), ("topo-sort", {})]
    passes = build_passes(entries)
    assert passes[1].config.max_input == 10 and passes[1].config.max_output == 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("fold-everything", "unknown pass 'fold-everything'"),
        ("fold-constants:size=3", "no parameter 'size'"),
        ("fold-constants:max_input=big", "max_input must be an integer, not 'big'"),
        ("quantize:weights_only=maybe", "weights_only must be true or false, not 'maybe'"),
        ("distill:detection_loss=maybe", "detection_loss must be true or false, or none, not 'maybe'"),
        ("quantize:max_drop=x", "max_drop must be a number, or none, not 'x'"),
        ("fold-constants:max_input=-1", ">= 0"),
        ("fold-constants:max_input", "key=value"),
    ],
)
def test_bad_specs_are_recipe_errors(spec: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build_passes(parse_spec(spec))


def test_builtin_lossless_uses_only_registered_lossless_passes() -> None:
    passes = build_passes(load_recipe("lossless"))
    assert all(p.lossless for p in passes)
    assert {p.name for p in passes} <= set(REGISTRY)
    assert "lossless" in BUILTIN_RECIPES


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_recipe_files(tmp_path: Path, suffix: str) -> None:
    data = {"passes": ["fold-bn", {"name": "fold-constants", "max_output": 5}, {"topo-sort": None}]}
    path = tmp_path / f"r{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    entries = load_recipe(str(path))
    assert entries == [("fold-bn", {}), ("fold-constants", {"max_output": 5}), ("topo-sort", {})]


def test_unreadable_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(RecipeError, match="cannot parse"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="neither a built-in"):
        load_recipe("no-such-recipe")
