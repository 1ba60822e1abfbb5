"""The main job: load a model, run a recipe through the verified pipeline, measure, save.

``optimize_file`` is what ``onnxopt optimize`` runs; it also backs the
``onnxopt.optimize`` library call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.data import Dataset, ImageOptions, open_dataset
from onnxopt.errors import DataError, OutputError
from onnxopt.evaluate.compare import Comparison, compare
from onnxopt.evaluate.layers import layer_errors
from onnxopt.io.output_lock import exclusive_output
from onnxopt.io.writing import check_writable
from onnxopt.optimizer.context import Context
from onnxopt.optimizer.pipeline import Pipeline, PipelineResult
from onnxopt.optimizer.recipe import RecipeEntry, build_passes
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner

#: Passes whose result depends on the data they calibrate on (random data makes them guess).
DATA_LEARNING_PASSES = ("quantize", "bias-correct", "reconstruct", "prune-channels")


@dataclasses.dataclass
class OptimizeResult:
    """Everything one optimization run produced and measured."""

    input_path: Path
    output_path: Path | None
    recipe: list[RecipeEntry]
    pipeline: PipelineResult
    comparison: Comparison
    data: str
    seed: int
    input_file_bytes: int
    output_file_bytes: int | None
    latency: BenchResult | None = None  # input and output benchmarked interleaved, when asked for


def optimize_file(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    recipe: list[RecipeEntry],
    *,
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
    """Optimize ``model_path`` with ``recipe`` and write the result to ``output_path``.

    ``output_path=None`` with ``in_place=True`` replaces the input (atomically);
    otherwise writing over the input is refused. ``target_opset`` converts an
    older model (including one below the supported range) first. Everything is validated
    (model, recipe, data) before any pass runs; on any error nothing is written.
    ``bench`` benchmarks input and output interleaved once the output is written;
    ``per_layer`` adds per-layer error localization to the comparison.
    ``batch`` is the deployment batch size: passes that decide by latency (``quantize:fallback=profile``)
    and the benchmark measure at it (default: 1, or the model's fixed batch).
    """
    model_path = Path(model_path)
    target = _resolve_output(model_path, output_path, in_place)
    with exclusive_output(target) if target is not None else contextlib.nullcontext():
        return _optimize(
            model_path,
            target,
            recipe,
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
            progress=progress or NullProgress(),
        )


def _optimize(
    model_path: Path,
    target: Path | None,
    recipe: list[RecipeEntry],
    *,
    data: str | None,
    images: ImageOptions | None,
    seed: int,
    in_place: bool,
    external_data: bool | None,
    storage: str,
    guard_samples: int | None,
    target_opset: int | None,
    bench: BenchConfig | None,
    per_layer: bool,
    batch: int | None,
    progress: Progress,
) -> OptimizeResult:
    passes = build_passes(recipe)
    source = io.read_model(model_path)
    model = io.to_model(source, target_opset=target_opset)
    converted = io.opset_version(model) != source.opset
    reference = Runner(source.source)
    dataset = open_dataset(data, reference.inputs, seed=seed, images=images) if data else None
    if batch is not None and batch < 1:
        raise DataError("--batch must be positive")
    context = Context(dataset=dataset, seed=seed, progress=progress, reference=reference, batch=batch or 1)
    if guard_samples is not None:
        context.guard_samples = guard_samples
    result = Pipeline(passes).run(model, context, source=None if converted else source)
    if converted:
        result.notes.insert(0, f"opset converted {source.opset} -> {target_opset} before the passes")
    learners = sorted({r.name for r in result.records if r.name in DATA_LEARNING_PASSES})
    if dataset is None and learners:
        result.notes.append(
            f"WARNING: no --data given: {', '.join(learners)} learned from random inputs; accuracy is unmeasured"
        )
    eval_data = dataset or _guard_dataset(reference, seed)
    comparison = _evaluate(reference, result.runner, eval_data, progress)
    if per_layer:
        progress.start("comparing layers", None)
        try:
            layers = layer_errors(source.proto, io.to_proto(result.model), eval_data, on_batch=progress.advance)
        finally:
            progress.finish()
        comparison = dataclasses.replace(comparison, layers=layers)
    written = None
    if target is not None:
        # When no pass changed anything, the input's own bytes are written unchanged.
        keep_bytes = result.unchanged_input is not None and not external_data and storage == "dense"
        final = result.unchanged_input if keep_bytes else result.model
        written = io.save(
            final, target, external_data=external_data, storage=storage, protect=() if in_place else (model_path,)
        )
    latency = None
    if bench is not None and written is not None:
        if batch is not None:
            bench = dataclasses.replace(bench, batches=(batch,))
        latency = benchmark([model_path, written], bench, dataset=dataset, progress=progress)
    return OptimizeResult(
        latency=latency,
        input_path=model_path,
        output_path=written,
        recipe=recipe,
        pipeline=result,
        comparison=comparison,
        data=result.guard_data if dataset is None else dataset.description,
        seed=seed,
        input_file_bytes=model_path.stat().st_size,
        output_file_bytes=io.file_bytes(written) if written else None,
    )


def _resolve_output(model_path: Path, output_path: str | os.PathLike[str] | None, in_place: bool) -> Path | None:
    if in_place:
        if output_path is not None and Path(output_path).resolve() != model_path.resolve():
            raise OutputError("--in-place writes over the input: do not also give a different -o")
        return model_path
    if output_path is None:
        raise OutputError("no output given: pass -o OUT.onnx (or --in-place to replace the input)")
    target = Path(output_path)
    if target.exists() and model_path.exists() and target.resolve() == model_path.resolve():
        raise OutputError(f"{target}: refusing to write over the input model (use --in-place)")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; give a file name")
    check_writable(target.parent if str(target.parent) else Path("."))  # fail before the work, not after
    return target


def _guard_dataset(reference: Runner, seed: int) -> Dataset:
    from onnxopt.data import default_random

    return default_random(reference.inputs, seed)


def _evaluate(reference: Runner, candidate: Runner, dataset: Dataset, progress: Progress) -> Comparison:
    progress.start("evaluating", dataset.num_samples)
    try:
        return compare(reference, candidate, dataset, on_batch=progress.advance)
    finally:
        progress.finish()
