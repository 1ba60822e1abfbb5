"""Library entry points that take file paths and recipe names, as the CLI does."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.data import DataSpec, ImageOptions, InputShapes, default_random, open_dataset, parse_input_shapes
from onnxopt.errors import DataError, ModelLoadError, RecipeError
from onnxopt.evaluate.compare import Comparison
from onnxopt.evaluate.compare import compare as compare_models
from onnxopt.evaluate.layers import DEFAULT_THRESHOLD_DB, layer_errors
from onnxopt.optimizer.recipe import BUILTIN_RECIPES
from onnxopt.optimizer.run import OptimizeOptions, OptimizeResult, optimize_file
from onnxopt.progress import NullProgress, Progress
from onnxopt.tune import TuneOptions, TuneResult
from onnxopt.tune import tune as tune_models

if TYPE_CHECKING:
    from onnxopt.distill import DistillConfig, DistillResult

ModelInput = str | os.PathLike | onnx.ModelProto | ir.Model
DataInput = str | os.PathLike | Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]] | None


def optimize(
    model: ModelInput,
    output: str | os.PathLike[str] | None = None,
    options: OptimizeOptions | None = None,
    *,
    progress: Progress | None = None,
    **fields: Any,
) -> OptimizeResult:
    """Optimize ``model`` -- a file path, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` -- into ``output``.

    What to do is one :class:`OptimizeOptions` -- given whole, or as its fields by keyword
    (``recipe="int8"``, ``passes="fold-bn,quantize"``, ``data="eval.npz"``, ``seed=0``, ...), which
    override ``options`` when both are given. ``data`` may also be a dict of arrays (input name ->
    ``[N, ...]``, plus ``labels``) or an iterable of such feeds (concatenated). Without ``output`` nothing
    is written: the optimized model is ``result.model`` (an ``onnx.ModelProto``).

    >>> result = onnxopt.optimize(proto, recipe="int8", data={"image": images, "labels": labels})
    >>> result.model, result.to_dict()["summary"]
    """
    with tempfile.TemporaryDirectory(prefix="onnxopt-api-") as folder:
        work = Path(folder)
        for key in ("data", "eval_data"):
            if fields.get(key) is not None:
                fields[key] = _data_source(fields[key], work, key)
        options = options or OptimizeOptions()
        if fields:
            try:
                options = dataclasses.replace(options, **fields)
            except TypeError as e:
                raise RecipeError(f"optimize: {e}") from e
        path = _model_path(model, work)
        in_memory = output is None and not options.in_place
        target = work / "optimized.onnx" if in_memory else output
        result = optimize_file(path, target, options, progress=progress)
        if in_memory:
            result.proto = onnx.load(str(target)) if result.output_path is not None else None
            result.output_path = None
        return result


def _model_path(model: ModelInput, work: Path) -> Path:
    """A path to ``model`` (written into ``work`` when it is a model object)."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"optimize: expected a path, onnx.ModelProto or onnx_ir.Model, not {type(model).__name__}")
    path = work / "input.onnx"
    io.save(model, path)
    return path


def _data_source(data: DataInput, work: Path, key: str = "data") -> Any:
    """``data`` as what :class:`OptimizeOptions` takes: a source string, or a ``.npz`` written from arrays."""
    if data is None or isinstance(data, (str, os.PathLike, DataSpec)):
        return os.fspath(data) if isinstance(data, os.PathLike) else data
    if isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        parts: dict[str, list[np.ndarray]] = {}
        for feed in data:
            if not isinstance(feed, Mapping):
                raise DataError(f"data: expected dicts of arrays (input name -> array), got {type(feed).__name__}")
            for name, array in feed.items():
                parts.setdefault(str(name), []).append(np.asarray(array))
        if not parts:
            raise DataError("data: the iterable of feeds is empty")
        arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    if not arrays:
        raise DataError("data: no arrays given")
    path = work / f"{key}.npz"
    np.savez(path, **arrays)
    return str(path)


def compare_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    data: str | None = None,
    images: ImageOptions | None = None,
    drop_nonfinite: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    per_layer: bool = False,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    input_shapes: InputShapes | str | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare two model files on ``data`` (default: 8 random samples); ``per_layer`` localizes the error too.
    Data holding NaN or Inf is refused, or with ``drop_nonfinite`` those samples are left out.

    The result's ``random_inputs`` is true when the inputs were seeded random
    samples -- by default, or ``data="random[:N]"`` -- and its ``data`` then
    says which (``"no --data, seed 0"``): agreement only, never accuracy.
    """
    valid = [io.validate(p) for p in (reference, candidate)]  # one-line errors naming the file
    files = [v.file for v in valid]
    ref, cand = (v.runner for v in valid)
    shapes = parse_input_shapes(input_shapes) if isinstance(input_shapes, str) else input_shapes
    if data:
        dataset = open_dataset(data, ref.inputs, seed=seed, images=images, shapes=shapes, drop_nonfinite=drop_nonfinite)
    else:
        dataset = default_random(ref.inputs, seed, shapes)
    progress = progress or NullProgress()
    progress.start("comparing", dataset.num_samples)
    try:
        comparison = compare_models(ref, cand, dataset, batch_size=batch_size, on_batch=progress.advance)
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
    drop_nonfinite: bool = False,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark model files interleaved (the first is the baseline); inputs from ``data`` (NaN/Inf refused, or
    with ``drop_nonfinite`` left out) or random."""
    config = config or BenchConfig()
    dataset = None
    if data:
        inputs = io.validate(models[0]).runner.inputs
        dataset = open_dataset(
            data, inputs, seed=config.seed, images=images, shapes=config.input_shapes, drop_nonfinite=drop_nonfinite
        )
    return benchmark(models, config, dataset=dataset, progress=progress)


#: ``onnxopt.compare(...)`` and ``onnxopt.bench(...)``: the CLI's names
compare = compare_files
bench = bench_files


def tune(
    models: str | os.PathLike[str] | list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: TuneOptions | None = None,
    *,
    progress: Progress | None = None,
    **fields: Any,
) -> list[TuneResult]:
    """Search recipes for each of ``models`` under an accuracy budget (:mod:`onnxopt.tune`), as ``onnxopt tune``
    does; ``options`` given whole or as its fields by keyword (``data="train.npz"``, ``max_drop=0.01``,
    ``objective="size"``, ``trials=12``, ``ray="auto"``, ...). One result per model.

    >>> [result] = onnxopt.tune("model.onnx", "tuned.onnx", data="train.npz", objective="size")
    >>> result.chosen.spec, result.held_out["drop"]
    """
    if isinstance(fields.get("data"), (str, os.PathLike)):
        fields["data"] = (str(fields["data"]),)
    if isinstance(fields.get("eval_data"), (str, os.PathLike)):
        fields["eval_data"] = (str(fields["eval_data"]),)
    try:
        options = dataclasses.replace(options or TuneOptions(data=fields.get("data", ())), **fields)
    except TypeError as e:
        raise RecipeError(f"tune: {e}") from e
    paths = [str(m) for m in models] if isinstance(models, list) else [str(models)]
    return tune_models(paths, str(output), options, progress)


def distill(
    teacher: str | os.PathLike[str],
    student: str,
    data: str,
    output: str | os.PathLike[str],
    config: DistillConfig | None = None,
    **options: Any,
) -> DistillResult:
    """``onnxopt distill``: :func:`onnxopt.distill.distill` (``options``: ``keras_output``, ``eval_data``,
    ``on_epoch``), where ``--student width=F`` of an ONNX teacher is the teacher narrowed by the optimizer
    (``lossless``, then ``prune-channels``)."""
    from onnxopt.distill import distill as distill_student

    return distill_student(teacher, student, data, output, config, narrow=_narrowed_onnx, **options)


def _narrowed_onnx(teacher: Path, ratio: float, seed: int) -> onnx.ModelProto:
    """``teacher`` with ``ratio`` of each prunable group's channels removed (lowest L2 norm first, kept counts a
    multiple of 8), after the lossless recipe, verified like any run: the student of ``width=1-ratio``."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-student-") as folder:
        out = Path(folder) / "student.onnx"
        options = OptimizeOptions(passes=f"lossless,prune-channels:ratio={ratio:.6g};multiple=8", seed=seed)
        optimize_file(teacher, out, options)
        return io.read_supported(out).proto


__all__ = [
    "BUILTIN_RECIPES", "OptimizeOptions", "TuneOptions", "bench", "bench_files", "compare", "compare_files", "distill",
    "optimize", "tune",
]  # fmt: skip
