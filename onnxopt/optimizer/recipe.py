"""Recipes: a pipeline written as data.

A recipe is an ordered list of ``(pass name, parameters)``. It comes from:

* a CLI string: ``fold-bn,clip-weights:percentile=99.9,quantize:calibration=entropy``
  (entries separated by ``,``; parameters after ``:`` separated by ``;`` or ``:``); a built-in
  recipe's name in the list stands for its passes (``lossless,quantize:max_drop=0.01``);
* a YAML or JSON file: ``{"passes": ["fold-bn", {"name": "fold-constants", "max_output": 1000}]}``
  or the bare list;
* a built-in name from :data:`BUILTIN_RECIPES`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from onnxopt.errors import RecipeError, one_line
from onnxopt.passes import REGISTRY, OptPass

RecipeEntry = tuple[str, dict[str, Any]]

BUILTIN_RECIPES: dict[str, str] = {
    # Every step preserves outputs up to float rounding (guard tolerance 1e-4 relative).
    "lossless": ",".join(
        [
            "remove-initializer-inputs",  # IR<4 weights listed as inputs are not constants until this runs
            "fold-constants",  # early: materializes ConstantOfShape/Shape-chain weights the folds below need
            "eliminate-identity",  # Identity/Dropout between Conv and BN would hide the pattern
            # BN into Conv/ConvTranspose/Gemm/MatMul; one with no layer to fold into stays a BN, which
            # onnxruntime runs as a blocked 1x1 Conv (a Mul+Add made the digits CNN 3 % slower)
            "fold-bn:standalone=keep",
            "fold-affine",  # after fold-bn: folds the Mul+Add it (or a converter) left behind
            "fold-constants",  # again: folding may leave constant subexpressions (e.g. cloned weights)
            "dedup-initializers",  # before remove-unused, so merged duplicates are dropped
            "remove-unused",
            "topo-sort",  # last: a canonical order for deterministic output
        ]
    ),
}
#: How the int8 recipes calibrate activations (the tools' int8-everywhere graphs use it too).
INT8_CALIBRATION = "calibration=percentile;percentile=99.999"
#: The int8 recipes' quantize step (``int8``, ``prune+int8``).
INT8_QUANTIZE = (
    f"quantize:{INT8_CALIBRATION};fallback=profile;bias_correct=true;rounding=gptq;max_db_loss=3;"
    "max_reading_drop=0.01;qat=auto"
)
BUILTIN_RECIPES["int8"] = ",".join(
    [
        BUILTIN_RECIPES["lossless"],  # BN folded into the weights first: one quantized Conv instead of Conv+BN
        "equalize",  # lossless: evens out per-channel weight ranges that BN folding left (depthwise blocks)
        # static QDQ: per-channel int8 weights rounded by GPTQ on --data, int32 biases (corrected for the
        # weights' mean rounding error), uint8 activations calibrated on --data at their 99.999th percentile (not
        # min/max: all-int8 output SNR +8.7 dB on the glyph detector, +0.4 to +1.2 dB on the recognizer, the
        # orientation classifier and the digits CNN; not the 99.99th: the glyph detector's all-int8 boxes held out
        # R/P 0.989/0.990 against 0.971/0.995, its reading budget's drop 0.016 against 0.0325, the other three
        # models within 0.008, docs/INT8.md); float compute kept where onnxruntime's int8
        # kernel is slower, and on the layers that cost the most beyond rounding the weights alone (per µs of
        # int8 speed they give up: on the glyph detector 0.80x fp32 against 0.95x by error alone,
        # tools/budget_order_check.py): where the
        # outputs read as a task (top-1, accuracy, strings, detections) until the reading's 95 % upper bound loses
        # at most 0.01 beyond the weights-only model, on samples calibration did not fit (when --data has 512);
        # elsewhere until no output loses more than 3 dB of SNR. If int8 is then not 3 % faster, every node
        # computes float -- weights stored int8 either way (a file about 26 % of fp32, never slower). Before the
        # budget keeps layers float, the int8 model is fine-tuned quantization-aware when --data has enough
        # samples and TensorFlow is installed. The bound, not the point estimate: at 0.01 on three draws of
        # --data, the point let the OCR recognizer lose 0.012 to 0.034 of 1,024 held-out strings beyond
        # weights-only, the bound 0.007 to 0.016 (tools/reading_budget_check.py, docs/INT8.md)
        INT8_QUANTIZE,
    ]
)
BUILTIN_RECIPES["prune"] = ",".join(
    [
        BUILTIN_RECIPES["lossless"],  # BN folded first: its scales then live in the weights that are ranked
        # 30 % of every prunable group's channels, lowest filter L2 norm first; kept counts rounded up to a
        # multiple of 8: onnxruntime's CPU convolutions work in blocks of 8/16 channels, and odd counts made a
        # pruned MobileNet-style model 1.78x slower than the original (multiple=8: 0.90x)
        # with less than 256 samples of --data (or none) only 10 %: nothing could win the rest back
        "prune-channels:ratio=0.3;multiple=8;without_data_ratio=0.1",
        "reconstruct",  # refit the layers whose inputs lost channels, on --data (give held-out data)
        # fine-tune the pruned model on the original's outputs over --data (the tf extra); the result must
        # stay within 2 points of the original on a held-back tenth of the data, else the run exits 3
        "distill:max_drop=0.02",
        "remove-unused",  # slicing can leave a shape computation (a replaced Reshape target) dead
    ]
)
BUILTIN_RECIPES["prune+int8"] = ",".join(
    [
        BUILTIN_RECIPES["prune"],
        "equalize",  # as in int8: the refit weights are balanced before they are rounded
        INT8_QUANTIZE,  # last, as in int8: on the pruned, refit model
    ]
)


#: The lossy passes each built-in recipe exists for: when one of them is rolled back or declines everything,
#: the run did not do what was asked (exit status 3 unless --allow-fallback). Auxiliary lossy steps
#: (``reconstruct`` refitting after pruning) are not the point and are not listed.
RECIPE_PURPOSE: dict[str, tuple[str, ...]] = {
    "lossless": (),
    "int8": ("quantize",),
    "prune": ("prune-channels",),
    "prune+int8": ("prune-channels", "quantize"),
}


def requested_lossy_passes(recipe: str | None, passes: str | None, entries: list[RecipeEntry]) -> set[str]:
    """The lossy passes the user asked for: a built-in recipe's purpose, or every lossy pass of a pass list
    or recipe file."""
    if not passes and (recipe or "lossless") in RECIPE_PURPOSE:
        return set(RECIPE_PURPOSE[recipe or "lossless"])
    return {name for name, _ in entries if name in REGISTRY and not REGISTRY[name].lossless}


def parse_spec(spec: str) -> list[RecipeEntry]:
    """Parse ``name[:key=value[;key=value...]],...`` into recipe entries (values as strings)."""
    entries: list[RecipeEntry] = []
    for raw in spec.split(","):
        raw = raw.strip()
        if not raw:
            continue
        name, _, rest = raw.partition(":")
        if name.strip() in BUILTIN_RECIPES and not rest.strip():  # a built-in recipe inside a list expands
            entries.extend(parse_spec(BUILTIN_RECIPES[name.strip()]))
            continue
        params: dict[str, Any] = {}
        # ';' or ':' separate parameters, but only before another key=, so values may hold ':' (pattern=2:4)
        for item in filter(None, (p.strip() for p in re.split(r"[;:](?=\s*[A-Za-z_][\w-]*\s*=)", rest))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise RecipeError(f"pass '{name}': expected key=value, got '{item}'")
            params[key.strip()] = value.strip()
        entries.append((name.strip(), params))
    if not entries:
        raise RecipeError("the pass list is empty")
    return entries


def resolve_recipe(recipe: str | None = None, passes: str | None = None) -> list[RecipeEntry]:
    """The one place a run's recipe is decided: a recipe (built-in name or file), or a pass list
    (``--passes``), never both; ``lossless`` when neither is given."""
    if recipe and passes:
        raise RecipeError("give either a recipe or a pass list, not both")
    return parse_spec(passes) if passes else load_recipe(recipe or "lossless")


def load_recipe(name_or_path: str) -> list[RecipeEntry]:
    """A built-in recipe by name, or a recipe read from a YAML/JSON file."""
    if name_or_path in BUILTIN_RECIPES:
        return parse_spec(BUILTIN_RECIPES[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(BUILTIN_RECIPES))
        hint = did_you_mean(name_or_path, BUILTIN_RECIPES)
        raise RecipeError(f"recipe '{name_or_path}' is neither a built-in ({known}) nor a file{hint}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json and yaml raise many error types
        raise RecipeError(f"{path}: cannot parse recipe: {one_line(e, 200)}") from e
    return _entries_from_data(data, path)


def _entries_from_data(data: Any, path: Path) -> list[RecipeEntry]:
    items = data.get("passes") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise RecipeError(f"{path}: expected a non-empty list of passes (or a mapping with 'passes')")
    entries: list[RecipeEntry] = []
    for item in items:
        if isinstance(item, str):
            entries.append((item, {}))
        elif isinstance(item, dict) and "name" in item:
            entries.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, params),) = item.items()
            entries.append((str(name), dict(params or {})))
        else:
            raise RecipeError(f"{path}: cannot read pass entry {item!r}")
    return entries


def build_passes(entries: list[RecipeEntry]) -> list[OptPass]:
    """Instantiate each entry's pass with its validated configuration."""
    passes = []
    for name, params in entries:
        cls = REGISTRY.get(name)
        if cls is None:
            hint = did_you_mean(name, REGISTRY) or f" (known: {', '.join(sorted(REGISTRY))})"
            raise RecipeError(f"unknown pass '{name}'{hint}")
        passes.append(cls(make_config(cls, params)))
    return passes


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to a misspelt ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def make_config(cls: type[OptPass], params: dict[str, Any]) -> Any:
    """Build ``cls.Config`` from ``params``, converting CLI strings to the fields' types."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    hints = typing.get_type_hints(cls.Config)
    values = {}
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            hint = did_you_mean(key, fields)
            raise RecipeError(f"pass '{cls.name}' has no parameter '{key}'{hint} (parameters: {known})")
        values[key] = _convert(cls.name, key, value, hints[key])
    try:
        return cls.Config(**values)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"pass '{cls.name}': {e}") from e


def typed_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of pass ``name`` with each string converted to its field's type (``"0.25"`` to 0.25, ``"true"``
    to True), as a recipe file writes them natively; a one-line RecipeError for an unknown pass or parameter."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise RecipeError(f"unknown pass '{name}'{did_you_mean(name, REGISTRY)}")
    hints = typing.get_type_hints(cls.Config)
    unknown = [key for key in params if key not in hints]
    if unknown:
        raise RecipeError(f"pass '{name}' has no parameter '{unknown[0]}'{did_you_mean(unknown[0], hints)}")
    return {key: _convert(name, key, value, hints[key]) for key, value in params.items()}


def _convert(pass_name: str, key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for option in options:
        if option is type(None) and value.lower() in ("none", "null"):
            return None
        if option is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        elif option in (int, float):
            try:
                return option(value)
            except ValueError:
                continue
        elif typing.get_origin(option) is typing.Literal:
            allowed = [str(a) for a in typing.get_args(option)]
            if value in allowed:
                return value
            hint = did_you_mean(value, allowed)
            raise RecipeError(f"pass '{pass_name}': {key} must be one of {', '.join(allowed)}, not '{value}'{hint}")
        elif option is str:
            return value
    raise RecipeError(f"pass '{pass_name}': {key} must be {_expected(options)}, not {value!r}")


#: how a parameter's type reads in an error message
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "none"}


def _expected(options: tuple[Any, ...]) -> str:
    """``(bool, NoneType)`` as ``true or false, or none``: what a value of that type is written as."""
    return ", or ".join(_WORDS.get(o, getattr(o, "__name__", str(o))) for o in options)


def describe_passes() -> list[dict[str, Any]]:
    """Every registered pass with its one-line doc and parameters -- type, allowed values, default and what
    it means (the ``help`` in the field's metadata in the pass's Config) -- for ``onnxopt passes``."""
    out = []
    for name, cls in sorted(REGISTRY.items()):
        hints = typing.get_type_hints(cls.Config)
        meanings = _field_help(cls.Config)
        params = []
        for f in dataclasses.fields(cls.Config):
            hint = hints[f.name]
            allowed = [str(a) for a in typing.get_args(hint)] if typing.get_origin(hint) is typing.Literal else None
            params.append({
                "name": f.name, "type": "choice" if allowed else _type_name(hint), "allowed": allowed,
                "default": f.default, "meaning": meanings.get(f.name, ""),
            })  # fmt: skip
        out.append({"name": name, "summary": cls.summary(), "lossless": cls.lossless, "parameters": params})
    return out


def _field_help(config: type) -> dict[str, str]:
    """``field -> its help``: the ``metadata["help"]`` each Config field carries (where each parameter is
    explained once)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config)}


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
