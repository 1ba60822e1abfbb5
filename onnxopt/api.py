"""Library entry points that take file paths and recipe names, as the CLI does."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.data import ImageOptions, InputShapes, default_random, open_dataset, parse_input_shapes
from onnxopt.errors import RecipeError
from onnxopt.evaluate.compare import Comparison, compare
from onnxopt.evaluate.layers import DEFAULT_THRESHOLD_DB, layer_errors
from onnxopt.optimizer.recipe import BUILTIN_RECIPES
from onnxopt.optimizer.run import OptimizeOptions, OptimizeResult, optimize_file
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    options: OptimizeOptions | None = None,
    *,
    progress: Progress | None = None,
    **fields: Any,
) -> OptimizeResult:
    """Optimize the model file ``model`` into ``output``.

    What to do is one :class:`OptimizeOptions` -- given whole, or as its fields by keyword
    (``recipe="int8"``, ``passes="fold-bn,quantize"``, ``data="eval.npz"``, ``seed=0``, ...), which
    override ``options`` when both are given.
    """
    options = options or OptimizeOptions()
    if fields:
        try:
            options = dataclasses.replace(options, **fields)
        except TypeError as e:
            raise RecipeError(f"optimize: {e}") from e
    return optimize_file(model, output, options, progress=progress)


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
    input_shapes: InputShapes | str | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare two model files on ``data`` (default: 8 random samples); ``per_layer`` localizes the error too.

    The result's ``random_inputs`` is true when the inputs were seeded random
    samples -- by default, or ``data="random[:N]"`` -- and its ``data`` then
    says which (``"no --data, seed 0"``): agreement only, never accuracy.
    """
    files = [io.read_supported(p) for p in (reference, candidate)]  # one-line errors before onnxruntime
    ref, cand = (Runner(f.source) for f in files)
    shapes = parse_input_shapes(input_shapes) if isinstance(input_shapes, str) else input_shapes
    if data:
        dataset = open_dataset(data, ref.inputs, seed=seed, images=images, shapes=shapes)
    else:
        dataset = default_random(ref.inputs, seed, shapes)
    progress = progress or NullProgress()
    progress.start("comparing", dataset.num_samples)
    try:
        comparison = compare(ref, cand, dataset, batch_size=batch_size, on_batch=progress.advance)
    finally:
        progress.finish()
    if comparison.random_inputs:
        source = f"--data {data}" if data else "no --data"
        comparison = dataclasses.replace(comparison, data=f"{source}, seed {seed}")
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
        inputs = Runner(file.source).inputs
        dataset = open_dataset(data, inputs, seed=config.seed, images=images, shapes=config.input_shapes)
    return benchmark(models, config, dataset=dataset, progress=progress)


__all__ = ["BUILTIN_RECIPES", "OptimizeOptions", "bench_files", "compare_files", "optimize"]
