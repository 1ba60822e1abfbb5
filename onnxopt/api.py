"""Library entry points: the CLI's commands as functions, taking what the CLI takes and model and data objects.

Every entry point takes a model as a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model``, and data as a
path (any ``--data`` source), a dict of arrays (input name -> ``[N, ...]``, plus ``labels``) or an iterable
of such feeds. Objects are written into a temporary folder for the library below (:class:`_Staging`), and
errors that name one of those files name the argument instead (``data=``, ``eval_data=``, ``candidate=``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.data import DataSpec, ImageOptions, InputShapes, default_random, open_dataset, parse_input_shapes
from onnxopt.errors import DataError, ModelLoadError, OnnxoptError, RecipeError
from onnxopt.evaluate.check import Thresholds
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
    with _staging("optimize") as staging:
        for key in ("data", "eval_data"):
            if fields.get(key) is not None:
                fields[key] = staging.data(fields[key], key)
        options = options or OptimizeOptions()
        if fields:
            try:
                options = dataclasses.replace(options, **fields)
            except TypeError as e:
                raise RecipeError(f"optimize: {e}") from e
        path = staging.model(model, "model=", "input")
        in_memory = output is None and not options.in_place
        target = staging.work / "optimized.onnx" if in_memory else output
        result = optimize_file(path, target, options, progress=progress)
        if in_memory:
            result.proto = onnx.load(str(target)) if result.output_path is not None else None
            result.output_path = None
        result.data = staging.described(result.data)
        result.fit_data = staging.described(result.fit_data) if result.fit_data else result.fit_data
        compared = result.comparison.data
        result.comparison = dataclasses.replace(result.comparison, data=compared and staging.described(compared))
        return result


class _Staging:
    """A temporary folder for the model and data objects an API call was given, written as files for the
    library below, and the argument each file came from (so that messages name the argument, not the file)."""

    def __init__(self, caller: str, work: Path) -> None:
        self.caller = caller
        self.work = work
        self.arguments: dict[str, str] = {}  # written file -> the argument it holds, e.g. "data="

    def model(self, model: ModelInput, argument: str, stem: str) -> Path:
        """A path to ``model``, written as ``<stem>.onnx`` when it is a model object; ``argument`` names it in
        messages (``model=``, ``models[1]``)."""
        if isinstance(model, (str, os.PathLike)):
            return Path(model)
        if isinstance(model, ir.Model):
            model = ir.serde.serialize_model(model)
        if not isinstance(model, onnx.ModelProto):
            raise ModelLoadError(
                f"{self.caller}: {argument} takes a path, an onnx.ModelProto or an onnx_ir.Model, "
                f"not {type(model).__name__}"
            )
        path = self.work / f"{stem}.onnx"
        io.save(model, path)
        self.arguments[str(path)] = argument
        return path

    def data(self, data: DataInput, key: str) -> Any:
        """``data`` as a ``--data`` source: itself when a source (a path, a ``DataSpec``), else a ``.npz`` written
        from its arrays (a dict of arrays, or an iterable of such feeds, concatenated)."""
        if data is None or isinstance(data, (str, os.PathLike, DataSpec)):
            return os.fspath(data) if isinstance(data, os.PathLike) else data
        if isinstance(data, Mapping):
            arrays = {str(k): np.asarray(v) for k, v in data.items()}
        else:
            parts: dict[str, list[np.ndarray]] = {}
            for feed in data:
                if not isinstance(feed, Mapping):
                    raise DataError(
                        f"{self.caller}: {key}= takes dicts of arrays (input name -> array), got {type(feed).__name__}"
                    )
                for name, array in feed.items():
                    parts.setdefault(str(name), []).append(np.asarray(array))
            if not parts:
                raise DataError(f"{self.caller}: {key}= is an empty iterable of feeds")
            arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        if not arrays:
            raise DataError(f"{self.caller}: {key}= holds no arrays")
        path = self.work / f"{key}.npz"
        np.savez(path, **arrays)
        self.arguments[str(path)] = f"{key}="
        return str(path)

    def named(self, text: str) -> str:
        """``text`` (an error message) with each written file, and the ``--data``/``--eval-data`` flag before
        it, replaced by the argument it came from."""
        for path, argument in self.arguments.items():
            for flag in ("--data ", "--eval-data "):
                text = text.replace(flag + path, argument)
            text = text.replace(path, argument)
        return text

    def described(self, description: str) -> str:
        """A dataset's ``description`` with each written file replaced by what it holds (``arrays of data=``)."""
        for path, argument in self.arguments.items():
            description = description.replace(path, f"arrays of {argument}")
        return description


@contextlib.contextmanager
def _staging(caller: str) -> Iterator[_Staging]:
    """A :class:`_Staging` for one call of ``caller``, removed after it; an onnxopt error raised within that
    names a staged file is raised on naming the argument instead."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-api-") as folder:
        staging = _Staging(caller, Path(folder))
        try:
            yield staging
        except OnnxoptError as e:
            e.args = (staging.named(str(e)),)
            raise


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
    thresholds: Thresholds | None = None,
) -> Comparison:
    """Compare two model files on ``data`` (default: 8 random samples); ``per_layer`` localizes the error too.
    Data holding NaN or Inf is refused, or with ``drop_nonfinite`` those samples are left out. With
    ``thresholds``, each output is checked against them: the result's ``passed`` and ``failures``.

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
        comparison = compare_models(
            ref, cand, dataset, batch_size=batch_size, on_batch=progress.advance, thresholds=thresholds
        )
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


def compare(
    reference: ModelInput,
    candidate: ModelInput,
    *,
    data: DataInput = None,
    atol: float | None = None,
    rtol: float | None = None,
    min_snr: float | None = None,
    min_top1: float | None = None,
    **options: Any,
) -> Comparison:
    """``onnxopt compare``: how closely ``candidate`` follows ``reference`` -- each a path, an
    ``onnx.ModelProto`` or an ``onnx_ir.Model`` -- on ``data`` (a path, a dict of arrays or an iterable of
    feeds; default 8 seeded random samples). ``options``: those of :func:`compare_files` (``per_layer``,
    ``seed``, ``batch_size``, ``drop_nonfinite``, ``images``, ``input_shapes``, ``progress``, ...).

    As a check: with ``atol``/``rtol`` (per element, as ``numpy.allclose``: ``|cand - ref| <= atol + rtol *
    |ref|``), ``min_snr`` (dB) or ``min_top1`` (arg-max agreement, on classifier-shaped outputs), the result's
    ``passed`` says whether every output met them and ``failures`` lists what each missed; without any,
    ``passed`` is None. Impossible thresholds raise at once.

    >>> check = onnxopt.compare(proto, result.model, data={"image": images}, atol=1e-3, min_top1=0.99)
    >>> check.passed, [f.message for f in check.failures]
    """
    thresholds = Thresholds(atol=atol, rtol=rtol, min_snr=min_snr, min_top1=min_top1)
    with _staging("compare") as staging:
        paths = [staging.model(m, f"{name}=", name) for m, name in ((reference, "reference"), (candidate, "candidate"))]
        source = staging.data(data, "data")
        comparison = compare_files(*paths, data=source, thresholds=thresholds, **options)
        if comparison.data:
            comparison = dataclasses.replace(comparison, data=staging.described(comparison.data))
        return comparison


def bench(
    models: ModelInput | list[ModelInput],
    config: BenchConfig | None = None,
    *,
    data: DataInput = None,
    images: ImageOptions | None = None,
    drop_nonfinite: bool = False,
    progress: Progress | None = None,
    **fields: Any,
) -> BenchResult:
    """``onnxopt bench``: latency of ``models`` interleaved, the first the baseline -- each a path, an
    ``onnx.ModelProto`` or an ``onnx_ir.Model`` (one alone is a list of one); inputs from ``data`` (a path, a
    dict of arrays or an iterable of feeds) or random. ``config`` given whole or as its fields by keyword
    (``seconds=0.5``, ``runs=50``, ``batches=(1, 8)``, ``memory=False``, ...). A model object is measured from
    a temporary file: its measurements' ``path`` is ``models[i]``.

    >>> timing = onnxopt.bench([proto, result.model], runs=50)
    """
    with _staging("bench") as staging:
        try:
            config = dataclasses.replace(config or BenchConfig(), **fields)
        except TypeError as e:
            raise RecipeError(f"bench: {e}") from e
        given = models if isinstance(models, list) else [models]
        paths = [staging.model(m, f"models[{i}]", f"model{i + 1}") for i, m in enumerate(given)]
        source = staging.data(data, "data")
        result = bench_files(
            paths, config, data=source, images=images, drop_nonfinite=drop_nonfinite, progress=progress
        )
        named = [dataclasses.replace(m, path=staging.named(m.path)) for m in result.measurements]
        return dataclasses.replace(result, measurements=named, data=staging.described(result.data))


def tune(
    models: ModelInput | list[ModelInput],
    output: str | os.PathLike[str],
    options: TuneOptions | None = None,
    *,
    progress: Progress | None = None,
    **fields: Any,
) -> list[TuneResult]:
    """Search recipes for each of ``models`` under an accuracy budget (:mod:`onnxopt.tune`), as ``onnxopt tune``
    does; ``options`` given whole or as its fields by keyword (``data="train.npz"``, ``max_drop=0.01``,
    ``objective="size"``, ``trials=12``, ``ray="auto"``, ...). One result per model.

    A model is a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model``; ``data`` and ``eval_data`` a path, a
    dict of arrays or an iterable of feeds (one source for every model), or a tuple of paths (one per model).
    A model object is tuned from a temporary file (``model.onnx``; with several models ``model1.onnx``, ...):
    the result's ``model`` and ``reproduce`` name that file, gone after the call.

    >>> [result] = onnxopt.tune("model.onnx", "tuned.onnx", data="train.npz", objective="size")
    >>> result.chosen.spec, result.held_out["drop"]
    """
    with _staging("tune") as staging:
        for key in ("data", "eval_data"):
            given = fields.get(key)
            if isinstance(given, (tuple, list)) and all(isinstance(g, (str, os.PathLike)) for g in given):
                fields[key] = tuple(os.fspath(g) for g in given)
            elif given is not None:
                fields[key] = (staging.data(given, key),)
        try:
            options = dataclasses.replace(options or TuneOptions(data=fields.get("data", ())), **fields)
        except TypeError as e:
            raise RecipeError(f"tune: {e}") from e
        given_models = models if isinstance(models, list) else [models]
        stems = ["model"] if len(given_models) == 1 else [f"model{i + 1}" for i in range(len(given_models))]
        arguments = ["models="] if len(given_models) == 1 else [f"models[{i}]" for i in range(len(given_models))]
        paths = [str(staging.model(m, a, s)) for m, a, s in zip(given_models, arguments, stems, strict=True)]
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
