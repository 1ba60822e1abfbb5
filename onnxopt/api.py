"""Library entry points that take file paths and recipe names, as the CLI does."""

from __future__ import annotations

import dataclasses
import os

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.data import ImageOptions, default_random, open_dataset
from onnxopt.errors import RecipeError
from onnxopt.evaluate.compare import Comparison, compare
from onnxopt.evaluate.layers import DEFAULT_THRESHOLD_DB, layer_errors
from onnxopt.optimizer.recipe import BUILTIN_RECIPES, load_recipe, parse_spec
from onnxopt.optimizer.run import OptimizeResult, optimize_file
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    recipe: str | None = None,
    passes: str | None = None,
    data: str | None = None,
    images: ImageOptions | None = None,
    seed: int = 0,
    in_place: bool = False,
    external_data: bool | None = None,
    storage: str = "dense",
    guard_samples: int | None = None,
    target_opset: int | None = None,
    bench: BenchConfig | None = None,
    per_layer: bool = False,
    batch: int | None = None,
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
        images=images,
        seed=seed,
        in_place=in_place,
        external_data=external_data,
        storage=storage,
        guard_samples=guard_samples,
        target_opset=target_opset,
        bench=bench,
        per_layer=per_layer,
        batch=batch,
        progress=progress,
    )


def compare_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    data: str | None = None,
    images: ImageOptions | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    per_layer: bool = False,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    progress: Progress | None = None,
) -> Comparison:
    """Compare two model files on ``data`` (default: 8 random samples); ``per_layer`` localizes the error too."""
    files = [io.read_supported(p) for p in (reference, candidate)]  # one-line errors before onnxruntime
    ref, cand = (Runner(f.source) for f in files)
    dataset = open_dataset(data, ref.inputs, seed=seed, images=images) if data else default_random(ref.inputs, seed)
    progress = progress or NullProgress()
    progress.start("comparing", dataset.num_samples)
    try:
        comparison = compare(ref, cand, dataset, batch_size=batch_size, on_batch=progress.advance)
    finally:
        progress.finish()
    if not per_layer:
        return comparison
    progress.start("comparing layers", None)
    try:
        layers = layer_errors(
            files[0].proto, files[1].proto, dataset, threshold_db=threshold_db, on_batch=progress.advance
        )
    finally:
        progress.finish()
    return dataclasses.replace(comparison, layers=layers)


def bench_files(
    models: list[str | os.PathLike[str]],
    config: BenchConfig | None = None,
    *,
    data: str | None = None,
    images: ImageOptions | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark model files interleaved (the first is the baseline); inputs from ``data`` or random."""
    config = config or BenchConfig()
    dataset = None
    if data:
        file = io.read_supported(models[0])
        dataset = open_dataset(data, Runner(file.source).inputs, seed=config.seed, images=images)
    return benchmark(models, config, dataset=dataset, progress=progress)


__all__ = ["BUILTIN_RECIPES", "bench_files", "compare_files", "optimize"]
