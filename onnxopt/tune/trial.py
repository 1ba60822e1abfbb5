"""One trial of ``onnxopt tune``: build a point's model on the fitting data, score it on the selection data.

:func:`run_trial` is what a local worker process runs: it takes a picklable :class:`TrialTask` naming files,
and returns a :class:`TrialRecord` (the cache stores its :meth:`~TrialRecord.to_dict`). A Ray task runs
:func:`run_shipped_trial` instead, the files coming through the object store (:func:`run_trials` chooses).
Nothing in a trial is timed -- trials run side by side.

A trial stops early when it is hopeless: after its float stage (pruning, refitting, distillation, clipping)
and again before the whole selection set, its drop is scored on the first quarter of the selection
samples, and it ends ``pruned`` when that drop exceeds the budget by more than two standard errors of
a proportion on that many samples (successive halving with one rung: quantization only adds error, and
a quarter of the samples already tells a hopeless trial from a close one). The float stage's model is
cached on its own, so trials that prune alike build it once.

When the tune has chosen, :func:`judge` gives every record its verdict and why for people -- from its drop
against the budget (:func:`within_budget`), never from ``status`` alone: a trial that finished (``ok``) over the
budget is ``over``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from onnxopt.data import open_dataset
from onnxopt.distill.batch_memory import memory_ceiling
from onnxopt.errors import OnnxoptError, one_line
from onnxopt.io.writing import write_bytes
from onnxopt.model_stats import estimate_macs
from onnxopt.optimizer.quality import QualityProbe
from onnxopt.optimizer.run import OptimizeOptions, optimize_file
from onnxopt.runtime import Runner
from onnxopt.tune.cache import TrialCache, trial_key
from onnxopt.tune.memory_watch import MemoryLimitExceeded, MemoryWatch
from onnxopt.tune.space import Point
from onnxopt.tune.workers import Workers

#: The first rung scores this fraction of the selection samples (at least MIN_RUNG).
RUNG_FRACTION = 0.25
MIN_RUNG = 16
#: What a drop may exceed the budget by and still be within it: float subtraction's error only (0.93 - 0.92 is
#: 0.010000000000000009), never a measurable sample -- one sample in a million is 1e-6.
BUDGET_SLACK = 1e-9
#: Fields a trial's JSON holds only when true.
_ONLY_WHEN_TRUE = ("finalist", "chosen", "promoted")


@dataclasses.dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs, by path and digest."""

    model: str
    model_digest: str
    point: Point
    fit: str
    fit_digest: str
    select: str
    select_digest: str
    seed: int
    max_drop: float
    cache: str
    batch: int | None = None
    metric: str = "auto"
    max_memory: int | None = None  # bytes of resident memory past which the trial is stopped (not in the key)

    @property
    def key(self) -> str:
        return trial_key(
            self.model_digest, self.point.spec, self.fit_digest, self.select_digest, str(self.seed),
            f"{self.max_drop:g}", str(self.batch), self.metric,
        )  # fmt: skip


@dataclasses.dataclass
class TrialRecord:
    """One trial of a tune, as the report lists it (:meth:`to_dict`: a field that does not apply -- None, or a
    False finalist/chosen -- is left out, as the trial's JSON always had it)."""

    name: str  # a built-in's name, or "trial <n>"
    spec: str  # the recipe as one pass list
    params: dict[str, Any]  # what the sampler chose ({} for built-ins)
    status: Literal["ok", "pruned", "failed"]
    seconds: float = 0.0  # building and scoring it (as first run, for a cached trial)
    cached: bool = False  # taken from the trial cache, not run by this tune
    model: str | None = None  # its model's path in the trial cache (when it made one)
    node: str | None = None  # the Ray node that ran it (on Ray)
    peak_memory: int | None = None  # the largest resident size (bytes) of the process while it ran (Linux)
    error: str | None = None  # why it failed
    epochs: int | None = None  # every fine-tuning pass's epochs where the tuner cut them (the halving's first rung)
    promoted: bool = False  # a first-rung trial the tuner reran at full epochs (as "<name>, full epochs")
    # -- scored on the selection part (status ok; `metric` also when pruned)
    metric: str | None = None
    baseline: float | None = None  # the original's metric
    drop: float | None = None  # the metric lost against the original
    feasible: bool | None = None  # drop within the budget
    size_bytes: int | None = None
    macs: int | None = None  # per sample
    int8_macs: int | None = None  # of those, what onnxruntime runs in int8 kernels (each distinct feasible model)
    fallbacks: list[str] | None = None  # what the optimizer fell back on while building it
    samples: int | None = None
    # -- stopped early (status pruned): the drop on the first rung, its samples, and where it stopped
    rung_drop: float | None = None
    rung_samples: int | None = None
    pruned: str | None = None
    # -- finalists, timed against the original; the one chosen
    latency_ratio: float | None = None
    size_ratio: float | None = None  # the file against the original's (every finished trial)
    macs_ratio: float | None = None  # MACs per sample against the original's (every finished trial)
    score: float | None = None  # on the tune's objective
    finalist: bool = False
    chosen: bool = False
    recipe: str | None = None  # the spec, shortened for people
    verdict: str | None = None  # chosen, ok, over, pruned or failed (:func:`judge`)
    why: str | None = None  # the verdict's reason, one line

    def to_dict(self) -> dict[str, Any]:
        """The trial's JSON: ``name, spec, params, status, seconds, cached``, and each other field that applies."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in sorted(out.items()) if v is not None and (v or k not in _ONLY_WHEN_TRUE)}

    @classmethod
    def of(cls, stored: dict[str, Any]) -> TrialRecord:
        """A record from its :meth:`to_dict` (a trial cache's result; its ``has_model`` flag is the cache's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})


def within_budget(drop: float, max_drop: float) -> bool:
    """Whether ``drop`` meets the budget: ``drop <= max_drop`` up to float subtraction's error (:data:`BUDGET_SLACK`),
    the one comparison every verdict of a tune uses."""
    return drop <= max_drop + BUDGET_SLACK


def judge(trial: TrialRecord, max_drop: float, chosen: TrialRecord | None = None) -> tuple[str, str]:
    """The trial's verdict and why, for people: ``failed`` (its error), ``pruned`` (its early drop),
    ``over`` (its drop on the selection part is over the budget), ``chosen``, or ``ok`` (within the budget; why
    it was not chosen, against ``chosen``). Decided from the drop itself, never from ``status`` alone."""
    if trial.status == "failed":
        return "failed", one_line(trial.error or "no reason recorded", 120)
    if trial.status == "pruned":
        drop = trial.rung_drop if trial.rung_drop is not None else math.nan
        pruned = (
            f"drop {_drop_text(drop, max_drop)} on the first {trial.rung_samples} samples > --max-drop {max_drop:g} "
            f"(stopped {trial.pruned})"
        )
        if trial.epochs is not None:
            pruned += f"; after {trial.epochs} epoch of fine-tuning" + (
                "; rerun at full epochs" if trial.promoted else ""
            )
        return "pruned", pruned
    if trial.drop is None:
        return "failed", "finished without a measured drop"
    short = ""
    if trial.epochs is not None:
        short = f"after {trial.epochs} epoch of fine-tuning" + ("; rerun at full epochs" if trial.promoted else "")
    if not within_budget(trial.drop, max_drop):
        over = f"drop {_drop_text(trial.drop, max_drop)} > --max-drop {max_drop:g}"
        return "over", f"{over}; {short}" if short else over
    if trial.chosen:
        return "chosen", "within budget; the best score of the finalists timed" + (f"; {short}" if short else "")
    reasons = ["within budget"] + ([short] if short else [])
    if not trial.finalist:
        reasons.append("not among the finalists timed")
    if trial.latency_ratio is not None and trial.latency_ratio >= 1:
        reasons.append(f"not faster ({trial.latency_ratio:.2f}x)")
    if trial.score is not None and chosen is not None and chosen.score is not None:
        reasons.append(f"score {trial.score:.3f} vs the chosen's {chosen.score:.3f}")
    return "ok", "; ".join(reasons)


def _drop_text(drop: float, max_drop: float) -> str:
    """``drop`` with 3 decimals, or as many more as it takes to show a drop over ``max_drop`` over it (0.0101 is
    not written "0.010"; 10 decimals reach past :data:`BUDGET_SLACK`)."""
    for decimals in range(3, 11):
        text = f"{drop:.{decimals}f}"
        if not drop > max_drop or float(text) > max_drop:
            return text
    return f"{drop:.10f}"


def run_trial(task: TrialTask) -> TrialRecord:
    """The trial's record (from the cache when it already ran): ``status`` ``ok``, ``pruned`` or ``failed``;
    for ``ok``, ``drop`` (selection metric lost against the original), ``size_bytes``, ``macs`` and
    ``model`` (its path in the cache)."""
    cache = TrialCache(Path(task.cache))
    key = task.key
    hit = _cached(task)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="onnxopt-trial-") as folder:
        result, model, keep = _attempt(task, cache, Path(folder))
        if not keep:
            return TrialRecord.of(result)
        stored = cache.put(key, result, model)
    return TrialRecord.of(stored)


def _cached(task: TrialTask) -> TrialRecord | None:
    """The task's record from the tune's cache, named as this run names it (a sampled point may repeat an earlier
    one), or None."""
    hit = TrialCache(Path(task.cache)).get(task.key)
    if hit is None:
        return None
    return TrialRecord.of({**hit, "name": task.point.name, "params": task.point.params, "cached": True})


def _attempt(task: TrialTask, cache: TrialCache, work: Path) -> tuple[dict[str, Any], Path | None, bool]:
    """``(result, model, keep)``: the trial's result and model, and whether the cache may keep them (not after
    an internal error, which a rerun tries again)."""
    started = time.perf_counter()
    keep = True
    watch = MemoryWatch(task.max_memory)
    try:
        with watch, memory_ceiling(task.max_memory):  # training batches sized to stay under the limit
            result, model = _run(task, cache, work)
    except MemoryLimitExceeded:  # stopped, not remembered: a rerun with more memory tries again
        limit = (task.max_memory or 0) / 2**30
        result, model, keep = (
            {"status": "failed", "error": f"stopped: resident memory passed --max-memory {limit:.3g} GB"},
            None,
            False,
        )
    except OnnxoptError as e:  # the recipe cannot work on this model: remembered
        result, model = {"status": "failed", "error": one_line(e, 300)}, None
    except Exception as e:  # an internal error: this trial fails, the tune goes on, a rerun tries again
        result, model, keep = (
            {"status": "failed", "error": one_line(f"internal error ({type(e).__name__}): {e}", 300)},
            None,
            False,
        )
    result.update(name=task.point.name, spec=task.point.spec, params=task.point.params, epochs=task.point.epochs)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_memory"] = watch.peak
    return result, model, keep


@dataclasses.dataclass(frozen=True)
class ShippedTrial:
    """A trial for a worker that shares no storage with the tune (another node of a Ray cluster): the task's
    paths are blank, and the model and data parts travel as object references to their bytes."""

    task: TrialTask
    model: Any  # ray.ObjectRef of the model file's bytes
    fit: Any
    select: Any


def run_shipped_trial(shipped: ShippedTrial) -> tuple[dict[str, Any], bytes | None, bool]:
    """What a Ray task runs: the files written to this node's scratch folder under their digests (once per node),
    the trial run there with a cache of its own; returns ``(result, model bytes, keep)`` for the tune to store.
    ``result["node"]`` names the Ray node that ran it."""
    import ray

    task = shipped.task
    scratch = Path(tempfile.gettempdir()) / "onnxopt-ray"
    scratch.mkdir(parents=True, exist_ok=True)
    local = {}
    for field, digest, ref, suffix in (
        ("model", task.model_digest, shipped.model, ".onnx"),
        ("fit", task.fit_digest, shipped.fit, ".npz"),
        ("select", task.select_digest, shipped.select, ".npz"),
    ):
        path = scratch / f"{digest}{suffix}"
        if not path.is_file():
            write_bytes(path, ray.get(ref))  # atomic: two tasks on one node may write the same file
        local[field] = str(path)
    task = dataclasses.replace(task, **local, cache=str(scratch / "cache"))
    with tempfile.TemporaryDirectory(prefix="onnxopt-trial-") as folder:
        result, model, keep = _attempt(task, TrialCache(Path(task.cache)), Path(folder))
        data = model.read_bytes() if model is not None else None
    result["node"] = ray.get_runtime_context().get_node_id()
    return result, data, keep


def run_trials(workers: Workers, tasks: list[TrialTask]) -> list[TrialRecord]:
    """Every task's record, in order: on local processes each reads its files by path; on Ray (``ships_files``)
    the tune's own cache answers first and the rest travel through the object store, their results stored in
    the tune's cache as if run here."""
    if not workers.ships_files:
        return workers.map(run_trial, tasks)
    records: list[TrialRecord | None] = []
    pending: list[int] = []
    for index, task in enumerate(tasks):
        records.append(_cached(task))
        if records[-1] is None:
            pending.append(index)
    shipped = [
        ShippedTrial(
            dataclasses.replace(tasks[i], model="", fit="", select="", cache=""),
            workers.put(tasks[i].model, tasks[i].model_digest),
            workers.put(tasks[i].fit, tasks[i].fit_digest),
            workers.put(tasks[i].select, tasks[i].select_digest),
        )
        for i in pending
    ]
    for index, (result, data, keep) in zip(pending, workers.map(run_shipped_trial, shipped), strict=True):
        if not keep:
            records[index] = TrialRecord.of(result)
            continue
        with tempfile.TemporaryDirectory(prefix="onnxopt-trial-") as folder:
            model = None
            if data is not None:
                model = Path(folder) / "model.onnx"
                model.write_bytes(data)
            records[index] = TrialRecord.of(TrialCache(Path(tasks[index].cache)).put(tasks[index].key, result, model))
    return [r for r in records if r is not None]


def _run(task: TrialTask, cache: TrialCache, work: Path) -> tuple[dict[str, Any], Path | None]:
    original = ir.load(task.model)
    inputs = Runner(task.model).inputs
    select = open_dataset(task.select, inputs, seed=task.seed)
    rung = max(MIN_RUNG, int(select.num_samples * RUNG_FRACTION))
    first = QualityProbe(original, select, limit=rung, metric=task.metric)
    margin = 2 * math.sqrt(0.25 / rung)  # two standard errors of a proportion near 1/2, the widest
    current = Path(task.model)
    stages = [s for s in task.point.stages if s]
    fell_back: list[str] = []
    for index, stage in enumerate(stages):
        prefix = ",".join(stages[: index + 1])
        key = trial_key(
            task.model_digest, prefix, task.fit_digest, str(task.seed), str(task.batch), task.metric, "stage"
        )
        built = cache.get(key)
        if built is None:
            out = work / f"stage{index}.onnx"
            options = OptimizeOptions(passes=stage, data=task.fit, seed=task.seed, batch=task.batch, metric=task.metric)
            result = optimize_file(current, out, options)
            built = cache.put(key, {"status": "ok", "fallbacks": result.fallbacks}, out)
        current = Path(built["model"])
        fell_back += built.get("fallbacks", [])
        if index < len(stages) - 1:
            drop = first.drop(ir.load(current))
            if drop > task.max_drop + margin:
                return _pruned(first.metric, drop, rung, f"after stage {index + 1} of {len(stages)}"), None
    final = ir.load(current)
    drop = first.drop(final)
    if drop > task.max_drop + margin:
        return _pruned(first.metric, drop, rung, "on the first rung"), None
    whole = QualityProbe(original, select, limit=select.num_samples, metric=task.metric)
    drop = whole.drop(final)
    macs, _ = estimate_macs(final)
    return {
        "status": "ok",
        "metric": whole.metric,
        "baseline": whole.baseline,
        "drop": drop,
        "feasible": within_budget(drop, task.max_drop),
        "size_bytes": current.stat().st_size,
        "macs": macs,
        "fallbacks": fell_back,
        "samples": select.num_samples,
    }, current


def _pruned(metric: str, drop: float, rung: int, where: str) -> dict[str, Any]:
    return {"status": "pruned", "metric": metric, "rung_drop": drop, "rung_samples": rung, "pruned": where}
