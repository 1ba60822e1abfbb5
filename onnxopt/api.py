"""Library entry points that take file paths and recipe names, as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

from onnxopt import io
from onnxopt.data import default_random, open_dataset
from onnxopt.errors import RecipeError
from onnxopt.evaluate import Comparison, compare
from onnxopt.optimize import OptimizeResult, optimize_file
from onnxopt.progress import Progress
from onnxopt.recipe import BUILTIN_RECIPES, load_recipe, parse_spec
from onnxopt.runtime import Runner


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    recipe: str | None = None,
    passes: str | None = None,
    data: str | None = None,
    seed: int = 0,
    in_place: bool = False,
    external_data: bool | None = None,
    guard_samples: int | None = None,
    target_opset: int | None = None,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Optimize the model file ``model`` into ``output`` with a recipe (name or file) or a pass list."""
    if recipe and passes:
        raise RecipeError("give either a recipe or a pass list, not both")
    entries = parse_spec(passes) if passes else load_recipe(recipe or "lossless")
    return optimize_file(
        model,
        output,
        entries,
        data=data,
        seed=seed,
        in_place=in_place,
        external_data=external_data,
        guard_samples=guard_samples,
        target_opset=target_opset,
        progress=progress,
    )


def compare_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    data: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare two model files on ``data`` (default: 8 random samples)."""
    runners = []
    for path in (reference, candidate):
        file = io.read_model(Path(path))  # one-line errors for bad files before onnxruntime sees them
        runners.append(Runner(file.source))
    ref, cand = runners
    dataset = open_dataset(data, ref.inputs, seed=seed) if data else default_random(ref.inputs, seed)
    if progress:
        progress.start("comparing", dataset.num_samples)
    try:
        return compare(ref, cand, dataset, batch_size=batch_size, on_batch=progress.advance if progress else None)
    finally:
        if progress:
            progress.finish()


__all__ = ["BUILTIN_RECIPES", "compare_files", "optimize"]
