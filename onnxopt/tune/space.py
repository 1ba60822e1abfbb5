"""The search space of ``onnxopt tune``: which recipes a trial may be, as points an Optuna trial samples.

A *point* is a recipe written as a pass list (:func:`onnxopt.optimizer.recipe.parse_spec`), cut into
*stages* where a trial may stop early: the float rewrites first (lossless, pruning with its refit and
distillation, weight clipping), then quantization. The built-in recipes are points too
(:func:`builtin_points`); tune evaluates them beside the sampled ones, so what it returns is never worse
on the objective than the best built-in that meets the budget.

The search tries :data:`FIRST_POINTS` (float16, then int8 weight storage alone, then int8 compute) first.
What a sampled point may hold, always in this order (the one in which each pass's precondition holds:
quantization last, on float weights; equalization right before it, on the weights it rounds):

* the ``lossless`` recipe, always;
* ``prune-channels`` (ratio 0.25 or 0.5 of every prunable group's channels, ``l2`` or ``thinet``
  importance, multiples of 8) with ``reconstruct`` after it, and ``distill`` when the ``tf`` extra is
  installed -- only with data to fit on;
* ``low-rank`` or not: data-aware factorization of the large heads (a recognizer's or classifier's), and
  with ``convs=4`` also of the four largest Convs, each rank chosen by the pass on held-back data;
* ``clip-weights`` (``mse``) or not;
* ``quantize`` or not: static int8 (calibration ``minmax``, ``percentile`` or ``auto``; rounding ``nearest``
  or ``gptq``; ``uint8`` or ``int16`` activations; the tune's accuracy budget as its mixed-precision budget,
  ``max_drop``) after ``equalize``, then quantization-aware fine-tuning (``qat``, at most 600 s) or not when
  the ``tf`` extra is installed; or int8 weight storage alone (``weights_only``); or float16 weight storage
  (``float16-weights``).

Sampled quantization never times anything (``fallback=none``): trials run side by side, so their timings
would be measured against each other; the finalists' latency is measured once, interleaved, by the tuner.

Fine-tuning is the costly part of a trial, so its epochs are a fidelity (successive halving): a sampled point
that fine-tunes (``distill``, ``qat``) runs first with :data:`LOW_EPOCHS` epoch of each (:func:`at_low_epochs`),
and the tuner reruns those that more training may bring within the budget at the passes' own epochs
(:func:`at_full_epochs`). The stages are not cut before a fine-tuning pass: each stage is one ``optimize`` run,
whose input is the original its passes see, so ``distill`` (in the float stage) learns from the model the trial
started from and ``qat`` (in the quantization stage) from the float model it quantized; a cut would make the
stage before it the teacher.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from onnxopt.optimizer.recipe import BUILTIN_RECIPES

#: Built-in recipes tune evaluates (every tune has data: its budget needs it).
BUILTINS = ("lossless", "int8", "prune", "prune+int8")
#: Those that distill (the ``tf`` extra): evaluated only where it is installed.
NEEDS_TF = ("prune", "prune+int8")
#: The passes that fine-tune, and the epochs a sampled point first runs each of them for.
FINE_TUNING = ("distill", "qat")
LOW_EPOCHS = 1


@dataclasses.dataclass(frozen=True)
class Point:
    """One recipe of the space."""

    name: str  # a built-in's name, or "trial <n>"
    stages: tuple[str, ...]  # pass lists run one after the other; the recipe is their concatenation
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the sampler chose ({} for built-ins)
    epochs: int | None = None  # every fine-tuning pass's epochs, where the tuner set them (LOW_EPOCHS)

    @property
    def spec(self) -> str:
        """The whole recipe as one pass list (what ``onnxopt optimize --passes`` takes)."""
        return ",".join(s for s in self.stages if s)


def can_distill() -> bool:
    """Whether the ``tf`` extra (distillation) is installed."""
    return importlib.util.find_spec("tensorflow") is not None


def builtin_points(distill: bool) -> list[Point]:
    """The built-in recipes as points; those needing distillation only when it is available."""
    return [Point(name, _stages(BUILTIN_RECIPES[name])) for name in BUILTINS if distill or name not in NEEDS_TF]


#: The first points every search tries (Optuna's ``enqueue_trial``): float16 and int8 weight storage alone, the
#: least lossy recipes that shrink the file (float compute; half and about a quarter of the bytes), which random
#: points need not reach in a dozen trials; then int8 compute as the ``int8`` recipe calibrates and rounds it
#: (percentile ranges, GPTQ, uint8 activations), kept float only where the tune's budget needs it -- the recipe
#: that makes a model faster where onnxruntime's int8 kernels win, which the sampler's proxy (size and MACs)
#: cannot tell from weight storage.
FIRST_POINTS: tuple[dict[str, Any], ...] = (
    *(
        {"prune_ratio": 0.0, "clip_weights": False, "quantize": storage, "low_rank": "none"}
        for storage in ("float16", "weights_only")
    ),
    {
        "prune_ratio": 0.0, "clip_weights": False, "quantize": "static", "calibration": "percentile",
        "rounding": "gptq", "activations": "uint8", "qat": False, "low_rank": "none",
    },
)  # fmt: skip


def sample(trial: Any, number: int, *, distill: bool) -> Point:
    """A point from an Optuna ``trial`` (its ``suggest_*`` calls decide every choice, seeded by the study)."""
    parts = [BUILTIN_RECIPES["lossless"]]
    ratio = trial.suggest_categorical("prune_ratio", [0.0, 0.25, 0.5])
    if ratio:
        importance = trial.suggest_categorical("prune_importance", ["l2", "thinet"])
        parts += [f"prune-channels:ratio={ratio};importance={importance};multiple=8", "reconstruct"]
        if distill and trial.suggest_categorical("distill", [False, True]):
            parts.append("distill:max_drop=0.02")
        parts.append("remove-unused")
    clip = trial.suggest_categorical("clip_weights", [False, True])
    mode = trial.suggest_categorical("quantize", ["none", "static", "weights_only", "float16"])
    tail = ""
    if mode == "static":
        calibration = trial.suggest_categorical("calibration", ["minmax", "percentile", "auto"])
        rounding = trial.suggest_categorical("rounding", ["nearest", "gptq"])
        activations = trial.suggest_categorical("activations", ["uint8", "int16"])
        tail = (
            f"equalize,quantize:calibration={calibration};rounding={rounding};activations={activations};"
            f"bias_correct=true;max_drop={{max_drop}}"
        )
        if distill and trial.suggest_categorical("qat", [False, True]):
            tail += ",qat:time_budget=600"
    elif mode == "weights_only":
        tail = "quantize:weights_only=true"
    elif mode == "float16":
        tail = "float16-weights"
    # suggested after the earlier choices, so that adding it left their seeded sequence as it was
    low_rank = trial.suggest_categorical("low_rank", ["none", "heads", "heads+convs"])
    if low_rank != "none":
        parts.append("low-rank:convs=4" if low_rank == "heads+convs" else "low-rank")
    if clip:
        parts.append("clip-weights:mode=mse")
    return Point(f"trial {number}", (",".join(parts), tail), dict(trial.params))


def _name(entry: str) -> str:
    return entry.split(":", 1)[0]


def fine_tunes(point: Point) -> bool:
    """Whether any pass of ``point`` fine-tunes (``distill``, ``qat``)."""
    return any(_name(e) in FINE_TUNING for stage in point.stages for e in stage.split(",") if e)


def _with_epochs(entry: str, epochs: int) -> str:
    if _name(entry) not in FINE_TUNING:
        return entry
    return f"{entry};epochs={epochs}" if ":" in entry else f"{entry}:epochs={epochs}"


def at_low_epochs(point: Point) -> Point:
    """``point`` with every fine-tuning pass run for :data:`LOW_EPOCHS` epoch (the first rung of the halving)."""
    stages = tuple(",".join(_with_epochs(e, LOW_EPOCHS) for e in s.split(",") if e) for s in point.stages)
    return dataclasses.replace(point, stages=stages, epochs=LOW_EPOCHS)


def at_full_epochs(point: Point) -> Point:
    """The sampled ``point`` as it was sampled (each fine-tuning pass at its own epochs), named as its rerun."""
    return dataclasses.replace(point, name=f"{point.name}, full epochs", epochs=None)


def short(spec: str) -> str:
    """``spec`` with the lossless recipe's passes at its start written ``lossless`` (as ``--passes`` also takes
    it), for tables a person reads."""
    lossless = BUILTIN_RECIPES["lossless"]
    return "lossless" + spec[len(lossless) :] if spec.startswith(lossless) else spec


def label(name: str, params: dict[str, Any], epochs: int | None = None) -> str:
    """A point in a few words for a table row: a built-in's name, or a sampled point's choices
    (``lossless + prune 0.25 l2 + distill + clip + quantize minmax/gptq/uint8``; ``quantize weights`` for int8
    weight storage alone); ``epochs``, where the tuner cut the fine-tuning, follows ``distill`` and ``qat``
    (``distill 1 epoch``)."""
    if not params:
        return name
    cut = f" {epochs} epoch" if epochs is not None else ""
    parts = ["lossless"]
    if params.get("prune_ratio"):
        parts.append(f"prune {params['prune_ratio']:g} {params.get('prune_importance', '')}".rstrip())
        if params.get("distill"):
            parts.append("distill" + cut)
    if params.get("low_rank", "none") != "none":
        parts.append("low-rank" if params["low_rank"] == "heads" else "low-rank + convs")
    if params.get("clip_weights"):
        parts.append("clip")
    if params.get("quantize") == "static":
        parts.append(f"quantize {params.get('calibration')}/{params.get('rounding')}/{params.get('activations')}")
        if params.get("qat"):
            parts.append("qat" + cut)
    elif params.get("quantize") == "weights_only":
        parts.append("quantize weights")
    elif params.get("quantize") == "float16":
        parts.append("float16 weights")
    return " + ".join(parts)


def with_budget(point: Point, max_drop: float) -> Point:
    """``point`` with the tune's budget written into its quantize stage (``max_drop={max_drop}``)."""
    stages = tuple(s.replace("{max_drop}", f"{max_drop:g}") for s in point.stages)
    return dataclasses.replace(point, stages=stages)


def _stages(spec: str) -> tuple[str, ...]:
    """A built-in's pass list cut before its quantization (``equalize`` and ``quantize``), if it has one."""
    entries = [e for e in spec.split(",") if e]
    names = [e.split(":", 1)[0] for e in entries]
    if "quantize" not in names:
        return (spec, "")
    cut = names.index("equalize") if "equalize" in names else names.index("quantize")
    return (",".join(entries[:cut]), ",".join(entries[cut:]))
