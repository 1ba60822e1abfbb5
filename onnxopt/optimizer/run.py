"""The main job: load a model, run a recipe through the verified pipeline, measure, save.

One spine per run (:func:`_optimize`): prepare (validate and open everything before any pass) -> run the
pipeline (a plan's verified replay when it applies) -> evaluate -> write -> bench.

``optimize_file`` is what ``onnxopt optimize`` runs; it also backs the
``onnxopt.optimize`` library call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.bench import BenchConfig, BenchResult, benchmark
from onnxopt.bench.runtime_audit import RuntimeAudit, audit_if_quantized
from onnxopt.data import (
    Dataset,
    DataSpec,
    FiniteSamples,
    InputShapes,
    batch_size_for,
    fixed_batch,
    parse_input_shapes,
)
from onnxopt.errors import DataError, OutputError, UnsupportedModelError
from onnxopt.evaluate.compare import Comparison, KnownOutputs, compare
from onnxopt.evaluate.layers import layer_errors
from onnxopt.evaluate.readings import METRICS
from onnxopt.io.output_lock import exclusive_output
from onnxopt.io.writing import check_writable
from onnxopt.optimizer import verified_replay
from onnxopt.optimizer.context import DEFAULT_GUARD_SAMPLES, Context, RunSettings
from onnxopt.optimizer.pipeline import PassStatus, Pipeline, PipelineResult
from onnxopt.optimizer.plan import Plan, Verification, data_digest, model_sha256
from onnxopt.optimizer.quality import check_metric
from onnxopt.optimizer.recipe import RecipeEntry, build_passes, requested_lossy_passes, resolve_recipe
from onnxopt.passes.base import OptPass
from onnxopt.passes.quantize.quantize_qdq import QuantizeQDQPass, already_quantized
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner
from onnxopt.shared_weights import SharedWeightsModel

#: Rounding only the weights of a trained CNN to int8 (per channel) keeps its outputs at 30-45 dB SNR on real
#: inputs (the suite's real models: 35-44 dB). Far below this, the data drives the model where its outputs are
#: mostly rounding noise, and a budget of a few dB beyond that yardstick says nothing about the result.
YARDSTICK_FLOOR_DB = 10.0


@dataclasses.dataclass(frozen=True)
class OptimizeOptions:
    """Everything a run is asked to do besides the model and the output, validated once.

    ``recipe`` (a built-in name or a YAML/JSON file) or ``passes`` (a pass list, ``fold-bn,quantize:...``);
    ``data`` (a source such as ``eval.npz``, ``random:32`` or an image folder, with its image options;
    ``None``: seeded random inputs, good for agreement and speed only); ``in_place`` replaces the input
    atomically; ``external_data=None`` writes a side file only past the protobuf limit; ``storage``:
    ``dense``, ``sparse`` or ``packed``; ``guard_samples`` per pass (default 64); ``target_opset``
    converts the model first; ``bench`` benchmarks input and output interleaved once the output is
    written; ``per_layer`` adds per-layer error localization; ``batch`` is the deployment batch size:
    passes that decide by latency and the benchmark measure at it (default 1, or the model's fixed batch).
    Data holding NaN or Inf is refused before any pass runs; ``drop_nonfinite`` leaves those samples of ``data``
    and ``eval_data`` out instead, and the run's notes say how many.
    """

    recipe: str | None = None
    passes: str | None = None
    data: DataSpec | None = None
    eval_data: DataSpec | None = None  # the final comparison's data, when it must differ from what passes fit
    seed: int = 0
    in_place: bool = False
    external_data: bool | None = None
    storage: str = "dense"
    guard_samples: int | None = None
    target_opset: int | None = None
    bench: BenchConfig | None = None
    per_layer: bool = False
    batch: int | None = None
    input_shapes: InputShapes | None = None
    plan: str | os.PathLike[str] | None = None  # replay this plan's decisions: nothing is timed
    save_plan: str | os.PathLike[str] | None = None  # write every measured decision here
    drop_nonfinite: bool = False  # leave out samples holding NaN/Inf (else such data is refused)
    metric: str = "auto"  # how accuracy budgets read the outputs: auto, top1, sequence, detection, values

    def __post_init__(self) -> None:
        for name in ("data", "eval_data"):  # a plain source is the common case: accept it as one
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, DataSpec(getattr(self, name)))
            if self.drop_nonfinite and getattr(self, name) is not None:
                object.__setattr__(self, name, dataclasses.replace(getattr(self, name), drop_nonfinite=True))
        if self.eval_data is not None and self.data is None:
            raise DataError("--eval-data scores the result on other data than --data: give --data too")
        if isinstance(self.input_shapes, str):
            object.__setattr__(self, "input_shapes", parse_input_shapes(self.input_shapes))
        if self.batch is not None and self.batch < 1:
            raise DataError("--batch must be positive")
        if self.guard_samples is not None and self.guard_samples <= 0:
            raise DataError("--guard-samples must be positive")
        if self.metric not in METRICS:
            raise DataError(f"--metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.storage not in io.STORAGES:
            raise OutputError(f"storage must be one of {', '.join(io.STORAGES)}, not {self.storage!r}")

    def recipe_entries(self) -> list[RecipeEntry]:
        """The recipe this run follows (:func:`~onnxopt.optimizer.recipe.resolve_recipe`)."""
        return resolve_recipe(self.recipe, self.passes)


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
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # requested lossy passes that did not apply
    plan: dict | None = None  # every measured decision (onnxopt.optimizer.plan), recorded or replayed
    proto: onnx.ModelProto | None = None  # the optimized model, when the API ran without an output file
    recipe_name: str | None = None  # the recipe as the user named it (a built-in or a file); None for --passes
    held_out: bool = False  # scored on --eval-data, which no pass calibrated or fitted on
    fit_data: str | None = None  # what the passes calibrated and fitted on (--data, or random inputs)
    # why the run's comparisons cannot vouch for the written model (also fallbacks: exit 3 unless allowed)
    untrusted: list[str] = dataclasses.field(default_factory=list)
    runtime: RuntimeAudit | None = None  # what onnxruntime runs of the written model, when quantize applied

    @property
    def model(self) -> onnx.ModelProto:
        """The optimized model as an ``onnx.ModelProto`` (read from the output file when there is one)."""
        if self.proto is None:
            if self.output_path is None:
                raise OutputError("this run wrote no model")
            self.proto = onnx.load(str(self.output_path))
        return self.proto

    def to_dict(self) -> dict:
        """The run as the report JSON (:data:`onnxopt.report.SCHEMA`, kind ``optimize``: what ``onnxopt report``
        renders)."""
        from onnxopt.report import optimize_report

        return optimize_report(self)

    def __repr__(self) -> str:
        size = f"{self.output_file_bytes / self.input_file_bytes:.2f}x size" if self.output_file_bytes else "no file"
        recipe = f"recipe {self.recipe_name}" if self.recipe_name else f"{len(self.recipe)} passes"
        fell = f", fell back: {len(self.fallbacks)}" if self.fallbacks else ""
        return f"OptimizeResult({self.input_path.name} -> {self.output_path or 'memory'}, {recipe}, {size}{fell})"

    @property
    def fell_back(self) -> bool:
        """A lossy pass the user asked for was rolled back or declined everything (exit status 3)."""
        return bool(self.fallbacks)


def optimize_file(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    options: OptimizeOptions | None = None,
    *,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Optimize ``model_path`` as ``options`` say and write the result to ``output_path``.

    ``output_path=None`` with ``options.in_place`` replaces the input (atomically); otherwise writing
    over the input is refused. Everything is validated (model, recipe, data) before any pass runs; on
    any error nothing is written.
    """
    options = options or OptimizeOptions()
    model_path = Path(model_path)
    recipe = options.recipe_entries()
    target = _resolve_output(model_path, output_path, options.in_place)
    if options.save_plan is not None:  # fail before the work, not after
        if Path(options.save_plan).is_dir():
            raise OutputError(f"{options.save_plan}: is a directory; give a file name for the plan")
        check_writable(Path(options.save_plan).parent)
    with exclusive_output(target) if target is not None else contextlib.nullcontext():
        return _optimize(model_path, target, recipe, options, progress or NullProgress())


@dataclasses.dataclass
class _Prepared:
    """A run validated and opened before any pass runs: what the later steps read."""

    model_path: Path
    recipe: list[RecipeEntry]
    options: OptimizeOptions
    passes: list[OptPass]
    plan: Plan
    source: io.ModelFile  # the input file, validated
    model: ir.Model  # read from it (converted to --target-opset when asked)
    converted: bool  # the opset was converted: the pipeline cannot start from the file's own bytes
    input_file_bytes: int
    reference: Runner  # the validation session on the input: the reference of the guard and the evaluation
    dataset: Dataset | None  # --data, opened (None: seeded random inputs, decided by the pipeline)
    held_out: Dataset | None  # --eval-data, opened: scored on data no pass saw
    settings: RunSettings


def _optimize(
    model_path: Path, target: Path | None, recipe: list[RecipeEntry], options: OptimizeOptions, progress: Progress
) -> OptimizeResult:
    """The spine of a run: prepare -> run the pipeline -> evaluate -> write -> bench."""
    run = _prepare(model_path, recipe, options, progress)
    result, context = _run_pipeline(run)
    comparison, eval_data = _evaluate(run, result, context)
    written = _write(run, result, target)
    latency = _bench(run, result, written)
    runtime = audit_if_quantized(written, result.records, options.bench)  # what onnxruntime runs of int8
    asked = requested_lossy_passes(options.recipe, options.passes, recipe)
    untrusted = _untrusted(result, context.is_random)
    return OptimizeResult(
        recipe_name=None if options.passes else (options.recipe or "lossless"),
        fallbacks=_fallbacks(result, asked) + untrusted,
        untrusted=untrusted,
        plan=run.plan.to_dict(bulky=False),  # the report's copy: GPTQ's levels stay in the plan file
        latency=latency,
        runtime=runtime,
        input_path=model_path,
        output_path=written,
        recipe=recipe,
        pipeline=result,
        comparison=comparison,
        data=eval_data.description,
        held_out=run.held_out is not None,
        fit_data=context.dataset.description if context.dataset is not None else None,
        seed=options.seed,
        input_file_bytes=run.input_file_bytes,
        output_file_bytes=io.file_bytes(written) if written else None,
    )


def _prepare(model_path: Path, recipe: list[RecipeEntry], options: OptimizeOptions, progress: Progress) -> _Prepared:
    """Everything checked and opened before any pass runs (a bad plan, model or data fails here): the passes,
    the plan to replay or record, the model, the data, the run's settings."""
    passes = build_passes(recipe)
    if options.plan is not None:
        plan = Plan.load(options.plan)
        plan.check_matches(model_path, recipe, options.seed)
    else:
        plan = Plan.new(recipe, options.seed, saved=options.save_plan is not None)  # what the passes measure
    valid = io.validate(model_path)  # the validation every command runs; its session is the reference
    source = valid.file
    input_file_bytes = model_path.stat().st_size if source.self_contained else io.file_bytes(model_path)
    model = io.to_model(source, target_opset=options.target_opset)
    _refuse_quantizing_twice(model_path, model, passes)
    reference = valid.runner
    seed, shapes = options.seed, options.input_shapes
    dataset = options.data.open(reference.inputs, seed=seed, shapes=shapes) if options.data else None
    # scored on data no pass saw (opened now: a bad --eval-data fails before any work)
    held_out = _open_eval_data(options.eval_data, reference.inputs, seed, shapes) if options.eval_data else None
    if dataset is not None:
        check_metric(reference, dataset, options.metric)
    settings = RunSettings(
        dataset=dataset,
        seed=seed,
        progress=progress,
        reference=reference,
        batch=options.batch or 1,
        input_shapes=shapes,
        plan=plan,
        guard_samples=options.guard_samples or DEFAULT_GUARD_SAMPLES,
        metric=options.metric,
    )
    converted = io.opset_version(model) != source.opset
    return _Prepared(
        model_path, recipe, options, passes, plan, source, model, converted, input_file_bytes, reference, dataset,
        held_out, settings,
    )  # fmt: skip


def _run_pipeline(run: _Prepared) -> tuple[PipelineResult, Context]:
    """The passes over the model (a plan's verified replay when it applies), and the notes the run's data and
    decisions call for; a replay that did not rebuild the planned model runs again, guarded, from a fresh
    state."""
    context = Context(run.settings)
    source = None if run.converted else run.source
    result = verified_replay.run(Pipeline(run.passes), run.model, context, source=source)
    if result.diverged is not None:  # a replay that did not rebuild the planned model: verified from scratch
        why, run.plan.verification = result.diverged, None
        model = io.to_model(run.source, target_opset=run.options.target_opset)
        context = context.rerun()
        result = Pipeline(build_passes(run.recipe)).run(model, context, source=source)
        result.notes.append(f"replay not verified by the plan ({why}): every pass was guarded and measured again")
    _add_run_notes(run, result, context)
    return result, context


def _add_run_notes(run: _Prepared, result: PipelineResult, context: Context) -> None:
    """What the summary must say about the run: a converted opset, data left out, learning from random inputs,
    a single sample, uninformative reference outputs, decisions timed or replayed."""
    options, plan, notes = run.options, run.plan, result.notes
    if run.converted:
        notes.insert(0, f"opset converted {run.source.opset} -> {options.target_opset} before the passes")
    for flag, data in (("--data", run.dataset), ("--eval-data", run.held_out)):
        if isinstance(data, FiniteSamples):
            notes.append(
                f"{flag} {data.inner.description}: {data.dropped} of {data.dropped + data.num_samples} samples held "
                "NaN or Inf and were left out (--drop-nonfinite)"
            )
    applied = {r.name for r in result.records if r.status == PassStatus.APPLIED}
    learners = sorted({p.name for p in run.passes if p.learns_from_data and p.name in applied})
    if context.is_random and learners:
        notes.append(
            f"WARNING: no --data given: {', '.join(learners)} learned from random inputs; accuracy is unmeasured"
        )
    if not context.is_random and run.dataset is not None and run.dataset.num_samples == 1:
        notes.append(
            "WARNING: --data has 1 sample: the guard and calibration saw one input; give a few dozen for a "
            "comparison that means something"
        )
    if result.reference_problem is not None and applied:
        notes.append(f"WARNING: the guard's reference outputs say nothing: {result.reference_problem}")
    if plan.replay:
        notes.append(f"decisions replayed from {options.plan} (measured on {plan.describe()}): nothing timed")
    elif plan.timed:
        hint = f"saved to {options.save_plan}" if options.save_plan else "--save-plan PLAN.json keeps them"
        notes.append(
            f"decisions of {', '.join(sorted(set(plan.timed)))} were timed on this machine ({plan.describe()}); "
            f"{hint}, --plan replays them"
        )


def _evaluate(run: _Prepared, result: PipelineResult, context: Context) -> tuple[Comparison, Dataset]:
    """The optimized model against the input on the evaluation data (the plan's measurements when a verified
    replay rebuilt the planned model on the same data), recorded in the plan when it is saved, localized per
    layer when asked; and that data."""
    options, plan, reference = run.options, run.plan, run.reference
    eval_data = run.held_out or context.resolve_dataset(reference.inputs)
    verifies = result.outputs_compared and _plan_verifies(plan, options)
    eval_digest = _eval_digest(reference, eval_data) if verifies else ""
    carried = Verification.from_dict(plan.verification) if result.carried and plan.verification else None
    if carried is not None and carried.eval_data == eval_digest:  # the planned model, on the planned data
        comparison = carried.planned_comparison()
        result.notes.append(
            f"the rebuilt model is the planned one (sha256 {carried.model_sha256[:12]}): its guard drift, output "
            f"SNRs and agreement were measured when the plan was made, on {plan.describe()}, on the same data"
        )
    elif result.outputs_compared:
        # held-out data is new to both models; the fit data's first batches were run by the guard already
        known = None if run.held_out is not None else result.guard_outputs
        runner = result.runner or SharedWeightsModel(result.model).runner(context.providers)
        comparison = _compare(reference, runner, eval_data, run.settings.progress, known)
    else:  # random inputs cannot run the model: nothing to compare (the pipeline's note says so)
        comparison = Comparison(0, [], data=eval_data.description, random_inputs=True)
    if options.save_plan is not None:
        if result.outputs_compared:  # what a replay that rebuilds this very model may take over
            digest, guard = model_sha256(result.model), result.guard_digest
            plan.verification = Verification.of_run(digest, guard, eval_digest, result, comparison).to_dict()
        plan.save(options.save_plan, run.model_path)
    if options.per_layer and result.outputs_compared:
        progress = run.settings.progress
        progress.start("comparing layers", None)
        try:
            layers = layer_errors(run.source.proto, result.model, eval_data, on_batch=progress.advance)
        finally:
            progress.finish()
        comparison = dataclasses.replace(comparison, layers=layers)
    return comparison, eval_data


def _write(run: _Prepared, result: PipelineResult, target: Path | None) -> Path | None:
    """The optimized model written to ``target`` (atomically; None: no file is written). When no pass changed
    anything, the input's own bytes are written unchanged."""
    if target is None:
        return None
    storage, external_data = run.options.storage, run.options.external_data
    keep_bytes = result.unchanged_input is not None and not external_data and storage == "dense"
    final = result.unchanged_input if keep_bytes else result.model
    protect = () if run.options.in_place else (run.model_path,)
    return io.save(final, target, external_data=external_data, storage=storage, protect=protect)


def _bench(run: _Prepared, result: PipelineResult, written: Path | None) -> BenchResult | None:
    """The input and the written output benchmarked interleaved, when asked for (at the deployment batch)."""
    bench, options = run.options.bench, run.options
    if bench is not None and written is not None and (run.dataset is not None or result.outputs_compared):
        if options.batch is not None:
            bench = dataclasses.replace(bench, batches=(options.batch,))
        bench = dataclasses.replace(bench, input_shapes=options.input_shapes)
        return benchmark([run.model_path, written], bench, dataset=run.dataset, progress=run.settings.progress)
    if bench is not None:
        result.notes.append("not benchmarked: random inputs cannot run the model; give --data to time it")
    return None


def _refuse_quantizing_twice(model_path: Path, model: ir.Model, passes: list[OptPass]) -> None:
    """An already quantized input with a recipe that quantizes: one clear line before any work (quantizing
    rounded values again, calibrated on what cannot be undone, only loses)."""
    quantizes = [p.name for p in passes if isinstance(p, QuantizeQDQPass)]
    quantized = already_quantized(model) if quantizes else None
    if quantized:
        raise UnsupportedModelError(
            f"{model_path}: already quantized ({quantized}): {quantizes[0]} takes the float model; give the "
            "original, or a recipe without quantize (lossless)"
        )


def _untrusted(result: PipelineResult, random: bool) -> list[str]:
    """Why the run's own measurements cannot vouch for the written model (a fallback each: exit 3 unless
    --allow-fallback): the guard's reference outputs say nothing, or the weights-only int8 yardstick of the
    quantizer's budget is itself far below anything a budget of a few dB could mean."""
    if not any(r.status == PassStatus.APPLIED for r in result.records):
        return []
    hint = "; give --data with real inputs" if random else ""
    out = []
    if result.reference_problem is not None:
        out.append(f"guard data: {result.reference_problem}, so no comparison can vouch for the result{hint}")
    for r in result.records:
        low = [d for d in r.details if d.get("weights_only_snr_db", math.inf) < YARDSTICK_FLOOR_DB]
        if r.status == PassStatus.APPLIED and low:
            worst = min(low, key=lambda d: d["weights_only_snr_db"])
            out.append(
                f"{r.name}: even rounding only the weights leaves '{worst['output']}' at {worst['weights_only_snr_db']}"
                f" dB SNR on this data (below {YARDSTICK_FLOOR_DB:g} dB): the data does not exercise the model{hint}"
            )
    return out


def _plan_verifies(plan: Plan, options: OptimizeOptions) -> bool:
    """Whether this run records a verification (``--save-plan``) or may use one (``--plan``)."""
    return options.save_plan is not None or (plan.replay and plan.verification is not None)


def _eval_digest(reference: Runner, dataset: Dataset) -> str:
    """The digest of the data the comparison runs on, batched as :func:`compare` batches it."""
    fixed = fixed_batch(reference.inputs)
    batch = fixed or batch_size_for(reference.inputs)
    return data_digest(dataset.batches(batch, None, exact=fixed is not None))


def _open_eval_data(spec: DataSpec, inputs, seed: int, shapes: InputShapes | None) -> Dataset:
    """``--eval-data`` opened like ``--data``; its errors name the option the user gave."""
    try:
        return spec.open(inputs, seed=seed, shapes=shapes)
    except DataError as e:
        raise DataError(str(e).replace("--data ", "--eval-data ", 1)) from e


def _fallbacks(result: PipelineResult, asked: set[str]) -> list[str]:
    """``"pass: reason"`` for each asked-for lossy pass whose every run was rolled back or changed nothing, and
    for each budget a pass's kept result missed."""
    out = []
    for name in sorted(asked):
        runs = [r for r in result.records if r.name == name]
        if not runs or any(r.status == PassStatus.APPLIED for r in runs):
            continue
        last = runs[-1]
        whole = [str(d) for d in last.declines if d.whole_model]
        reasons = whole or last.notes[-1:] or [str(d) for d in last.declines[:1]]
        what = "rolled back" if last.status == PassStatus.ROLLED_BACK else "declined"
        out.append(f"{name} {what}: {reasons[0] if reasons else 'nothing matched'}")
    # a budget a kept pass missed is a fallback whatever was asked: a collapsed model never passes silently
    out.extend(f"{r.name} missed its budget: {reason}" for r in result.records for reason in r.missed)
    return out


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


def _compare(
    reference: Runner, candidate: Runner, dataset: Dataset, progress: Progress, known: KnownOutputs | None
) -> Comparison:
    progress.start("evaluating", dataset.num_samples)
    try:
        return compare(reference, candidate, dataset, on_batch=progress.advance, known=known)
    finally:
        progress.finish()
