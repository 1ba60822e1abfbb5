"""``onnxopt tune``: choose and combine techniques under an accuracy budget, for one model or several at once.

For each model:

1. the data is split once, seeded (:mod:`onnxopt.tune.split`): fitting, selection, held-out;
2. the built-in recipes run first, one at a time (the ``int8`` recipe times int8 against float on
   this machine, which a neighbouring trial would disturb);
3. an Optuna TPE sampler, seeded, proposes points of the space (:mod:`onnxopt.tune.space`) in rounds of
   one trial per worker; the round runs on the pool (local processes or Ray tasks) and its results are
   told to the sampler in the order they were asked -- so the same seed proposes the same points
   wherever they ran. A point that fine-tunes runs first with one epoch of each fine-tuning pass; of those
   finished so far, the ones that missed the budget by least -- up to a third of them -- are
   rerun at the passes' own epochs, ahead of new points in the next round (asynchronous successive halving
   on the epochs, :func:`_promotions`; a first run within the budget is not rerun: more epochs change
   neither its size nor its MACs; the reruns are not told to the sampler, which learnt the point from its
   first run).
   Every trial is scored on the selection part (:mod:`onnxopt.tune.trial`) and cached
   (:mod:`onnxopt.tune.cache`). Several models share the pool: each round holds trials of every model;
4. the *finalists* -- trials within the budget on the selection part that no other beats on drop, size,
   MACs and float MACs together (a Pareto front; float MACs: those onnxruntime does not run in an int8 kernel),
   plus every built-in within the budget -- are timed against the
   original in one interleaved benchmark (:mod:`onnxopt.bench`), alone on the machine;
5. the best finalist on the objective (``size``: the file; ``latency``: the latency ratio; ``balanced``:
   the geometric mean of both ratios) is built once more, by ``onnxopt optimize`` from the recipe file
   written beside the output, with ``--save-plan``; its metric is measured on the held-out part, once.
   Beside the output go its recipe (``OUT.recipe.yaml``), its plan (``OUT.plan.json``) and the two data parts
   its rebuild reads (``OUT.fit.npz``, ``OUT.held-out.npz``), so the rebuild command names no cache path;
6. every trial gets a verdict and why (:func:`onnxopt.tune.trial.judge`), from its drop against the budget.

The sampler sees a proxy of the objective trials can know without timing (size ratio; MAC ratio for
latency; their geometric mean for balanced), and trials over the budget are told the budget's excess.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir
import yaml

from onnxopt.bench import BenchConfig, benchmark
from onnxopt.bench.runtime_audit import audit_runtime
from onnxopt.data import open_dataset
from onnxopt.errors import OutputError, TuneError, UnsupportedModelError
from onnxopt.evaluate.readings import METRICS
from onnxopt.io.validation import validate
from onnxopt.io.writing import write_bytes
from onnxopt.model_stats import estimate_macs, macs_per_node
from onnxopt.optimizer.plan import file_sha256 as file_digest
from onnxopt.optimizer.quality import QualityProbe, check_metric
from onnxopt.optimizer.recipe import parse_spec, typed_params
from onnxopt.optimizer.run import OptimizeOptions, optimize_file
from onnxopt.progress import NullProgress, Progress
from onnxopt.report.schema import envelope
from onnxopt.runtime import Runner
from onnxopt.tune import space
from onnxopt.tune.cache import default_folder
from onnxopt.tune.split import Split, split_data
from onnxopt.tune.trial import TrialRecord, TrialTask, judge, run_trials, within_budget
from onnxopt.tune.workers import Workers, default_processes, open_workers

OBJECTIVES = ("latency", "size", "balanced")
FINALISTS = 6  # sampled finalists timed per model (the feasible built-ins are timed besides)
HALVING = 3  # successive halving on fine-tuning epochs: at most 1 in HALVING first runs is rerun at full epochs


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """What ``onnxopt tune`` is asked; validated at once (one-line TuneError, nothing written)."""

    data: tuple[str, ...] = ()  # one source for every model, or one per model
    eval_data: tuple[str, ...] = ()  # the held-out part instead of a fifth of --data (as many as --data)
    max_drop: float = 0.01  # the metric's largest allowed drop on the selection and held-out parts
    objective: str = "balanced"
    batch: int | None = None  # the deployment batch the finalists are timed at
    trials: int = 12  # sampled trials per model, besides the built-ins
    time_budget: float | None = None  # seconds; no new round starts after it
    ray: str | None = None  # "auto" or an address: trials as Ray tasks
    cache: str | None = None  # the trial cache (default: the user's cache folder, cache.default_folder())
    seed: int = 0
    workers: int | None = None  # local processes (default: one per core)
    builtins: tuple[str, ...] | None = None  # built-in recipes to evaluate (default: all that can run)
    distill: bool | None = None  # sample distillation (default: when the tf extra is installed)
    metric: str = "auto"  # how the budget reads the outputs (onnxopt.evaluate.readings)
    max_memory: float | None = None  # GiB of resident memory per trial; a trial past it is stopped

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TuneError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop < 1):
            raise TuneError(f"--max-drop must be in [0, 1) (0.01 = one point), not {self.max_drop}")
        if self.metric not in METRICS:
            raise TuneError(f"--metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.max_memory is not None and not self.max_memory > 0:
            raise TuneError(f"--max-memory must be positive (GB), not {self.max_memory}")
        if self.trials < 0:
            raise TuneError("--trials must be 0 or more")
        if self.time_budget is not None and self.time_budget <= 0:
            raise TuneError("--time-budget must be positive (seconds)")
        if self.batch is not None and self.batch < 1:
            raise TuneError("--batch must be positive")
        if self.workers is not None and self.workers < 1:
            raise TuneError("--workers must be positive")
        if not self.data:
            raise TuneError("tune spends an accuracy budget: give --data (samples to fit, select and hold out on)")
        if self.eval_data and len(self.eval_data) != len(self.data):
            raise TuneError("give one --eval-data for each --data")
        unknown = [b for b in self.builtins or () if b not in space.BUILTINS]
        if unknown:
            raise TuneError(f"unknown built-in recipe {unknown[0]!r} (tune knows {', '.join(space.BUILTINS)})")


@dataclasses.dataclass
class TuneResult:
    """One model's tune."""

    model: Path
    output: Path
    recipe_file: Path
    plan_file: Path
    split: dict[str, Any]
    trials: list[TrialRecord]  # every trial, built-ins first, with latency ratios where timed
    chosen: TrialRecord
    held_out: dict[str, Any]  # the chosen model's metric on the held-out part, measured once
    objective: str
    max_drop: float
    notes: list[str]
    reproduce: list[str]  # the onnxopt command that rebuilds the output byte for byte from its recipe and plan
    rebuild_data: tuple[Path, Path]  # the fit and held-out parts the rebuild reads, copied beside the output
    cache: Path  # the trial cache this tune read and wrote

    def to_dict(self) -> dict[str, Any]:
        """The tune as the report JSON (:data:`onnxopt.report.SCHEMA`, kind ``tune``): every trial, the finalists'
        latency, the chosen recipe and its held-out metric."""
        return envelope(
            "tune",
            input={"path": str(self.model), "file_bytes": self.model.stat().st_size},
            output={
                "path": str(self.output),
                "recipe": str(self.recipe_file),
                "plan": str(self.plan_file),
                "data": [str(p) for p in self.rebuild_data],
            },
            cache=str(self.cache),
            objective=self.objective,
            max_drop=self.max_drop,
            split=self.split,
            trials=[t.to_dict() for t in self.trials],
            chosen={k: v for k, v in self.chosen.to_dict().items() if k != "model"},
            held_out=self.held_out,
            notes=self.notes,
            reproduce=self.reproduce,
        )


@dataclasses.dataclass
class _Subject:
    """One model being tuned."""

    path: Path
    output: Path
    digest: str
    split: Split
    fit_digest: str
    select_digest: str
    study: Any
    macs: int  # the original's MACs per sample (the latency proxy's denominator)
    trials: list[TrialRecord] = dataclasses.field(default_factory=list)
    asked: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    sampled: dict[str, space.Point] = dataclasses.field(default_factory=dict)  # first-rung trials' full points


def tune(models: list[str], output: str, options: TuneOptions, progress: Progress | None = None) -> list[TuneResult]:
    """Tune each of ``models``; with one model ``output`` is the model file to write, with several a folder
    (one ``<name>.tuned.onnx`` each). Bad input fails before anything is written."""
    progress = progress or NullProgress()
    paths = [Path(m) for m in models]
    if not paths:
        raise TuneError("give at least one model")
    if len(options.data) not in (1, len(paths)):
        raise TuneError(f"give one --data for every model or one per model ({len(paths)}), not {len(options.data)}")
    for path in paths:
        validate(path)  # the validation every command runs: one-line errors naming the file
    outputs = _outputs(paths, Path(output))
    distill = space.can_distill() if options.distill is None else options.distill
    workers = open_workers(options.ray, options.workers or default_processes())  # an unreachable Ray fails here
    try:
        cache = Path(options.cache) if options.cache else default_folder()
        pick = lambda given, i: given[i if len(given) > 1 else 0] if given else None  # noqa: E731
        subjects = [
            _subject(path, out, pick(options.data, i), pick(options.eval_data, i), cache, options)
            for i, (path, out) in enumerate(zip(paths, outputs, strict=True))
        ]
        started = time.perf_counter()
        builtins = [p for p in space.builtin_points(distill) if options.builtins is None or p.name in options.builtins]
        if not distill and options.builtins is None:
            for subject in subjects:
                subject.notes.append(
                    "prune and prune+int8 not evaluated, nor distillation sampled: they need the tf extra"
                )
        for subject in subjects:  # one at a time: the int8 recipe times int8 against float
            for point in builtins:
                progress.phase(f"tune {subject.path.name}: built-in {point.name}")
                subject.trials += run_trials(workers, [_task(subject, point, options, cache)])
        _search(subjects, workers, options, cache, distill, started, progress)
    finally:
        workers.close()
    return [_finish(subject, options, cache, progress) for subject in subjects]


def _outputs(paths: list[Path], output: Path) -> list[Path]:
    if len(paths) == 1:
        if output.is_dir():
            raise OutputError(f"{output}: is a folder; give the tuned model's file name")
        targets = [output]
    else:
        if output.exists() and not output.is_dir():
            raise OutputError(f"{output}: several models are tuned into a folder, and this is a file")
        targets = [output / f"{p.stem}.tuned.onnx" for p in paths]
    for path, target in zip(paths, targets, strict=True):
        if target.resolve() == path.resolve():
            raise OutputError(f"{target}: would overwrite the input model")
        if not (target.parent.is_dir() or (len(paths) > 1 and target.parent == output)):
            raise OutputError(f"{target.parent}: output folder does not exist")
    return targets


def _subject(path: Path, output: Path, data: str, held_out: str | None, cache: Path, options: TuneOptions) -> _Subject:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runner = Runner(str(path))
    # a forced --metric no output fits fails here, once and before the split is written, not in every trial
    if options.metric not in ("auto", "values"):
        check_metric(runner, open_dataset(data, runner.inputs, seed=options.seed), options.metric)
    split = split_data(data, runner.inputs, cache / "data", options.seed, held_out)
    sampler = optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=4)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for point in space.FIRST_POINTS:
        study.enqueue_trial(point)
    macs, _ = estimate_macs(ir.load(str(path)))
    return _Subject(
        path, output, file_digest(path), split, file_digest(split.fit), file_digest(split.select), study, macs
    )


def _task(subject: _Subject, point: space.Point, options: TuneOptions, cache: Path) -> TrialTask:
    return TrialTask(
        str(subject.path), subject.digest, space.with_budget(point, options.max_drop), str(subject.split.fit),
        subject.fit_digest, str(subject.split.select), subject.select_digest, options.seed, options.max_drop,
        str(cache), options.batch, options.metric,
        int(options.max_memory * 2**30) if options.max_memory is not None else None,
    )  # fmt: skip


def _search(
    subjects: list[_Subject], workers: Workers, options: TuneOptions, cache: Path, distill: bool, started: float,
    progress: Progress,
) -> None:  # fmt: skip
    """Rounds of trials for every model until ``trials`` sampled each (and their due reruns) or the time budget:
    a round's slots go first to first-rung trials due a rerun at full epochs, then to new points."""
    import optuna

    while True:
        if options.time_budget is not None and time.perf_counter() - started > options.time_budget:
            for subject in subjects:
                due = len(_promotions(subject, options))
                subject.notes.append(
                    f"--time-budget {options.time_budget:g} s: stopped after {subject.asked} of {options.trials} "
                    "sampled trials"
                    + (f" with {due} rerun(s) at full epochs due" if due else "")
                    + " (a rerun with the same cache resumes)"
                )
            break
        batch: list[tuple[_Subject, Any, TrialTask]] = []
        for subject in subjects:
            slots = workers.size
            for record in _promotions(subject, options)[:slots]:
                record.promoted = True
                point = space.at_full_epochs(subject.sampled[record.name])
                batch.append((subject, None, _task(subject, point, options, cache)))
                slots -= 1
            for _ in range(min(slots, options.trials - subject.asked)):
                asked = subject.study.ask()
                subject.asked += 1
                point = space.sample(asked, subject.asked, distill=distill)
                if space.fine_tunes(point):
                    subject.sampled[point.name] = point
                    point = space.at_low_epochs(point)
                batch.append((subject, asked, _task(subject, point, options, cache)))
        if not batch:
            break
        progress.phase(f"tune: {len(batch)} trial(s) on {workers.size} worker(s)")
        for (subject, asked, _), result in zip(batch, run_trials(workers, [t for _, _, t in batch]), strict=True):
            subject.trials.append(result)
            if asked is None:  # a rerun at full epochs: the sampler learnt its point from the first rung
                continue
            if result.status == "ok":
                subject.study.tell(asked, _proxy(result, subject, options))
            else:
                state = optuna.trial.TrialState.PRUNED if result.status == "pruned" else optuna.trial.TrialState.FAIL
                subject.study.tell(asked, state=state)
    for subject in subjects:
        first = [t for t in subject.trials if t.epochs is not None]
        if first:
            subject.notes.append(
                f"successive halving on fine-tuning epochs: {len(first)} trial(s) fine-tuned {space.LOW_EPOCHS} "
                f"epoch first; {sum(t.promoted for t in first)} of them, over the budget by least, rerun at full "
                "epochs"
            )


def _promotions(subject: _Subject, options: TuneOptions) -> list[TrialRecord]:
    """First runs (one epoch of fine-tuning) due a rerun at full epochs and not yet rerun: of the first runs
    finished so far (``n``, any status), those over the budget -- finished over it, or stopped early -- that
    missed it by least, at most ``n // HALVING`` of them (asynchronous successive halving's rule), one per
    recipe; once every point has been asked, at least the closest miss. A first run within the budget is a
    finished trial already; a rerun could lower only its drop, which the objective does not count."""
    first = [t for t in subject.trials if t.epochs is not None]
    rerun = len(first) // HALVING
    if subject.asked >= options.trials:
        rerun = max(rerun, 1)

    def missed(t: TrialRecord) -> float | None:
        if t.status == "ok" and t.drop is not None and not within_budget(t.drop, options.max_drop):
            return t.drop
        return t.rung_drop if t.status == "pruned" else None

    over = sorted(((missed(t), t.name, t) for t in first if missed(t) is not None), key=lambda m: (m[0], m[1]))
    closest: dict[str, TrialRecord] = {}  # one per recipe: TPE may propose a point twice
    for _, _, trial in over:
        closest.setdefault(trial.spec, trial)
    promoted = {t.spec for t in first if t.promoted}
    return [t for t in list(closest.values())[:rerun] if t.spec not in promoted]


def _proxy(result: TrialRecord, subject: _Subject, options: TuneOptions) -> float:
    """What the sampler minimizes: the objective as far as an untimed trial knows it, or the budget's excess."""
    assert result.drop is not None and result.size_bytes is not None and result.macs is not None  # status ok
    if not within_budget(result.drop, options.max_drop):
        return 10.0 + 100.0 * (result.drop - options.max_drop)
    size = result.size_bytes / subject.path.stat().st_size
    macs = result.macs / max(subject.macs, 1)
    return {"size": size, "latency": macs, "balanced": math.sqrt(size * macs)}[options.objective]


def _finalists(subject: _Subject, max_drop: float) -> list[TrialRecord]:
    """Feasible trials no other feasible trial beats on drop, size, MACs and float MACs at once (one per distinct
    model, at most FINALISTS sampled ones, smallest size x MACs first, then fewest float MACs), and every
    feasible built-in.

    Float MACs are the MACs onnxruntime does not run in an int8 kernel (:func:`_int8_macs`, from its optimized
    graph): without them an int8-compute model, a little less accurate than int8 weight storage of the same size
    and MACs, would be beaten before it was ever timed -- though it may be the faster of the two."""
    feasible = [
        t
        for t in subject.trials
        if t.status == "ok" and t.drop is not None and within_budget(t.drop, max_drop) and t.model
    ]
    unique: dict[str, TrialRecord] = {}
    for t in feasible:  # built-ins first: a sampled trial that rebuilt a built-in's model is that built-in
        unique.setdefault(file_digest(Path(str(t.model))), t)
    candidates = list(unique.values())
    for t in candidates:
        if t.int8_macs is None:
            t.int8_macs = _int8_macs(Path(str(t.model)), subject.notes)

    def float_macs(t: TrialRecord) -> int:
        return max((t.macs or 0) - (t.int8_macs or 0), 0)

    def measures(t: TrialRecord) -> tuple[float, int, int, int]:
        return (t.drop or 0.0, t.size_bytes or 0, t.macs or 0, float_macs(t))

    def beaten(t: TrialRecord) -> bool:
        mine = measures(t)
        return any(
            all(a <= b for a, b in zip(measures(o), mine, strict=True))
            and any(a < b for a, b in zip(measures(o), mine, strict=True))
            for o in candidates
        )

    builtin = [t for t in candidates if not t.name.startswith("trial ")]
    front = [t for t in candidates if t.name.startswith("trial ") and not beaten(t)]
    front.sort(key=lambda t: ((t.size_bytes or 0) * max(t.macs or 0, 1), float_macs(t), t.name))
    return builtin + front[:FINALISTS]


def _int8_macs(model: Path, notes: list[str]) -> int:
    """MACs per sample that onnxruntime runs in an int8 kernel (QLinearConv, QLinearMatMul, QGemm, ...) for
    ``model`` in the benchmark's session on the CPU; 0 for a model without QuantizeLinear, and 0 with a line in
    ``notes`` where onnxruntime cannot save its optimized graph (the front then counts every MAC as float, as
    though the model had no int8 compute)."""
    loaded = ir.load(str(model))
    if not any(node.op_type == "QuantizeLinear" for node in loaded.graph):
        return 0
    per_node, _ = macs_per_node(loaded)
    try:
        audit = audit_runtime(model)
    except UnsupportedModelError as e:
        notes.append(f"{model.name}: int8 MACs not read, counted as float: {e}")
        return 0
    ran_int8 = {q.node for q in audit.quantized if q.int8 and q.runtime_node is not None}  # not "removed"
    return sum(per_node.get(name, 0) for name in ran_int8)


def _finish(subject: _Subject, options: TuneOptions, cache: Path, progress: Progress) -> TuneResult:
    notes = subject.notes
    subject.output.parent.mkdir(parents=True, exist_ok=True)  # several models: the output folder
    finalists = _finalists(subject, options.max_drop)
    if not finalists:
        raise TuneError(f"{subject.path}: no trial met --max-drop {options.max_drop:g} on the selection data")
    progress.phase(f"tune {subject.path.name}: timing {len(finalists)} finalist(s) against the original, interleaved")
    inputs = Runner(str(subject.path)).inputs
    dataset = open_dataset(str(subject.split.select), inputs, seed=options.seed)
    config = BenchConfig(batches=(options.batch,) if options.batch else None, seconds=1.0, memory=False)
    bench = benchmark([subject.path, *[Path(str(t.model)) for t in finalists]], config, dataset=dataset)
    ratios = [m.ratio.median for m in bench.measurements[1:] if m.ratio is not None]
    size = subject.path.stat().st_size
    _set_ratios(subject)
    for trial, ratio in zip(finalists, ratios, strict=True):
        trial.latency_ratio = ratio
        size_ratio = trial.size_ratio or 0.0
        scores = {"size": size_ratio, "latency": ratio, "balanced": math.sqrt(size_ratio * ratio)}
        trial.score = scores[options.objective]
        trial.finalist = True
    chosen = min(finalists, key=lambda t: (t.score or 0.0, t.size_bytes or 0, t.name))
    chosen.chosen = True
    for trial in subject.trials:
        trial.verdict, trial.why = judge(trial, options.max_drop, chosen)
        if trial.spec:
            trial.recipe = space.short(trial.spec)
    recipe_file, plan_file, fit, held_out_file = (
        _beside(subject.output, suffix) for suffix in (".recipe.yaml", ".plan.json", ".fit.npz", ".held-out.npz")
    )
    progress.phase(f"tune {subject.path.name}: building {chosen.name} and scoring it on the held-out part")
    rebuild = OptimizeOptions(
        recipe=str(recipe_file), data=str(fit), eval_data=str(held_out_file), seed=options.seed,
        batch=options.batch, save_plan=plan_file, metric=options.metric,
    )  # fmt: skip
    try:
        write_bytes(recipe_file, recipe_yaml(chosen.spec).encode())
        write_bytes(fit, subject.split.fit.read_bytes())  # the rebuild's data, beside it: no cache path in its command
        write_bytes(held_out_file, subject.split.held_out.read_bytes())
        built = optimize_file(subject.path, subject.output, rebuild)
    except BaseException:
        for path in (recipe_file, fit, held_out_file):  # nothing beside an output that was not written
            path.unlink(missing_ok=True)
        raise
    held = open_dataset(str(held_out_file), inputs, seed=options.seed)
    probe = QualityProbe(ir.load(str(subject.path)), held, limit=held.num_samples, metric=options.metric)
    drop = probe.drop(ir.load(str(subject.output)))
    same = file_digest(subject.output) == file_digest(Path(str(chosen.model)))
    if not same:
        notes.append(
            f"the rebuilt {chosen.name} differs from its trial's model (a decision that depends on this machine's "
            "timing, a pass that decided on shapes the trial inferred between its stages, or a pass that is not "
            "deterministic); the held-out metric is the rebuilt model's"
        )
    if built.fallbacks:
        notes.append(f"in the rebuild, {'; '.join(built.fallbacks)}")
    held_out = {
        "metric": probe.metric, "baseline": probe.baseline, "value": probe.baseline - drop, "drop": drop,
        "samples": held.num_samples, "within_budget": within_budget(drop, options.max_drop), "same_as_trial": same,
        "size_ratio": subject.output.stat().st_size / size,
    }  # fmt: skip
    split = {
        "fit": str(subject.split.fit), "select": str(subject.split.select), "held_out": str(subject.split.held_out),
        "counts": list(subject.split.counts), "labels": subject.split.labels,
    }  # fmt: skip
    reproduce = [
        "onnxopt", "optimize", str(subject.path), str(subject.output), "--recipe", str(recipe_file), "--plan",
        str(plan_file), "--data", str(fit), "--eval-data", str(held_out_file), "--seed", str(options.seed),
    ] + (["--batch", str(options.batch)] if options.batch else [])  # fmt: skip
    return TuneResult(
        subject.path, subject.output, recipe_file, plan_file, split, subject.trials, chosen, held_out,
        options.objective, options.max_drop, notes, reproduce, (fit, held_out_file), cache,
    )  # fmt: skip


def _set_ratios(subject: _Subject) -> None:
    """Every finished trial's size and MACs against the original's (what the trial table shows)."""
    size = subject.path.stat().st_size
    for trial in subject.trials:
        if trial.status == "ok" and trial.size_bytes is not None and trial.macs is not None:
            trial.size_ratio = trial.size_bytes / size
            trial.macs_ratio = trial.macs / max(subject.macs, 1)


def _beside(output: Path, suffix: str) -> Path:
    """The file named ``suffix`` beside ``output`` (``tuned.onnx`` -> ``tuned.recipe.yaml``)."""
    return output.with_name(output.stem + suffix)


def recipe_yaml(spec: str) -> str:
    """``spec`` as a recipe file (``passes:`` one entry per pass), its parameters written as YAML numbers and
    booleans where the pass's field is one (``ratio: 0.25``, not ``'0.25'``)."""
    entries = [{"name": name, **typed_params(name, params)} if params else name for name, params in parse_spec(spec)]
    return yaml.safe_dump({"passes": entries}, sort_keys=False)
