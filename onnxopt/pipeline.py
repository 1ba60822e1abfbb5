"""Pipeline (pass manager), Context, PassRecord and the per-pass guard.

The pipeline runs configured passes in order over one :class:`onnx_ir.Model`.
After each pass that changed the model, the guard:

1. serializes the graph and runs ``onnx.checker`` with ``full_check``;
2. opens an onnxruntime session (graph optimizations DISABLED) over that
   graph and the model's own weight arrays, shared without copying
   (:mod:`onnxopt.shared_weights`);
3. runs the guard batches and compares with the outputs of the model as it
   was before the pass; a lossless pass must stay within its relative
   tolerance (``max|after - before| <= tol * max|before|`` per output).

A pass that raises, or fails any of these, is rolled back to the last good
model; the run continues and the :class:`PassRecord` says why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.bench.stats import Ratio
from onnxopt.data import Dataset, RandomDataset, batch_size_for, default_random, fixed_batch
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import OutputAgreement, agreement
from onnxopt.layer_error import LayerReport
from onnxopt.node_profile import NodeProfile, profile_nodes
from onnxopt.passes.base import OptPass, PassOutcome, graph_size
from onnxopt.progress import NullProgress, Progress
from onnxopt.quality import QualityProbe
from onnxopt.runtime import Runner
from onnxopt.shapes import annotate_shapes
from onnxopt.shared_weights import SharedWeightsModel

DEFAULT_GUARD_SAMPLES = 64


@dataclasses.dataclass
class ModelStats:
    """Size of a model: nodes (all graphs), parameters (initializer elements), tensor bytes."""

    nodes: int
    parameters: int
    bytes: int

    @classmethod
    def of(cls, model: ir.Model) -> ModelStats:
        nodes, _ = graph_size(model)
        params = nbytes = 0
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is not None:
                    params += tensor.size
                    nbytes += tensor.nbytes
        return cls(nodes, params, nbytes)


@dataclasses.dataclass
class PassRecord:
    """What one pass did and what it cost.

    ``status``: ``applied`` (changed and verified), ``unchanged`` (nothing
    matched), ``rolled back`` (changed but failed the guard or raised).
    ``max_drift``: max relative output change against the model before the pass.
    """

    name: str
    params: dict[str, Any]
    status: str
    seconds: float
    before: ModelStats
    after: ModelStats
    max_drift: float = 0.0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per-layer rows of the pass


@dataclasses.dataclass
class Context:
    """What the passes of one run share: data, seed, progress, guard settings."""

    dataset: Dataset | None = None
    seed: int = 0
    guard_samples: int = DEFAULT_GUARD_SAMPLES
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    providers: Sequence[str] = ("CPUExecutionProvider",)
    reference: Runner | None = None  # a session on the input model, if the caller already has one
    original: Callable[[], ir.Model] | None = None  # the input model, as the pipeline received it (set by it)
    batch: int = 1  # the deployment batch size latency decisions are measured at
    _probes: dict[int, QualityProbe] = dataclasses.field(default_factory=dict, repr=False)

    def activations(self, model: ir.Model, names: Sequence[str], limit: int) -> Iterator[dict[str, np.ndarray]]:
        """Tensors ``names`` of ``model`` on about ``limit`` samples, batch by batch: how passes that learn
        from data (reconstruct, quantize, prune-channels by activation) reach onnxruntime. The data is the
        run's dataset, or seeded random inputs when none was given."""
        from onnxopt.calibration import activations, input_specs

        dataset = self.dataset or default_random(input_specs(model), self.seed)
        return activations(model, names, dataset, limit=limit)

    def quality_probe(self, limit: int) -> QualityProbe:
        """The original model's outputs on about ``limit`` samples, to score candidates against (accuracy
        budgets: ``max_drop``). Built once per run and limit."""
        from onnxopt.calibration import input_specs

        if self.original is None:
            raise RuntimeError("the Context has no original model (it is set by Pipeline.run)")
        probe = self._probes.get(limit)
        if probe is None:
            original = self.original()
            dataset = self.dataset or default_random(input_specs(original), self.seed)
            probe = self._probes[limit] = QualityProbe(original, dataset, limit=limit, providers=self.providers)
        return probe

    def profile(self, model: ir.Model, *, batch: int = 1) -> NodeProfile:
        """Per-node latency of ``model`` at ``batch`` (or its fixed batch) on the run's providers, with every
        onnxruntime optimization on (how it will be deployed)."""

        return profile_nodes(model, self._timing_feeds(model, batch), providers=self.providers)

    def latency_ratio(self, baseline: ir.Model, candidate: ir.Model, *, batch: int = 1, seconds: float = 1.0) -> Ratio:
        """``candidate``'s latency over ``baseline``'s at ``batch`` on the run's first provider, interleaved
        (:func:`onnxopt.bench.run.paired_ratio`), every onnxruntime optimization on."""
        import tempfile

        from onnxopt.bench.run import paired_ratio

        feeds = self._timing_feeds(baseline, batch)
        with tempfile.TemporaryDirectory(prefix="onnxopt-latency-") as folder:
            paths = [Path(folder) / "baseline.onnx", Path(folder) / "candidate.onnx"]
            for model, path in zip((baseline, candidate), paths, strict=True):
                path.write_bytes(ir.serde.serialize_model(model).SerializeToString())
            return paired_ratio(paths[0], paths[1], self.providers[0], feeds, seconds=seconds)

    def _timing_feeds(self, model: ir.Model, batch: int) -> dict[str, np.ndarray]:
        """One batch of exactly ``batch`` samples (or the model's fixed batch) to time with: the run's data when
        it has that many, else seeded random inputs (latency does not depend on the values)."""
        from onnxopt.calibration import input_specs

        specs = input_specs(model)
        size = batch_size_for(specs, batch)
        dataset = self.dataset if self.dataset is not None and self.dataset.num_samples >= size else None
        dataset = dataset or RandomDataset(specs, size, dims={}, seed=self.seed)
        return next(iter(dataset.batches(size, size, exact=True))).feeds

    def layer_errors(self, reference: ir.Model, candidate: ir.Model, limit: int = 32) -> LayerReport:
        """Per-layer agreement of ``candidate`` with ``reference`` on about ``limit`` samples of the run's data."""
        from onnxopt.calibration import input_specs
        from onnxopt.layer_error import layer_errors

        dataset = self.dataset or default_random(input_specs(reference), self.seed)
        return layer_errors(io.to_proto(reference), io.to_proto(candidate), dataset, limit=limit)


@dataclasses.dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord]
    original: ModelStats
    final: ModelStats
    max_drift: float  # final model against the original, on the guard data
    guard_data: str
    notes: list[str]
    runner: Runner  # an onnxruntime session on the final model, as the guard verified it
    unchanged_input: bytes | None  # the input file's bytes, when no pass changed the model (save them as they are)


class _GuardFailure(Exception):
    pass


@dataclasses.dataclass
class _State:
    """The pipeline's position: the model, its last verified snapshot, and that snapshot's guard outputs."""

    model: ir.Model
    good: _Snapshot
    outputs: list[list[np.ndarray]]


class Pipeline:
    """Runs configured passes in order, each verified by the guard."""

    def __init__(self, passes: Sequence[OptPass]) -> None:
        self.passes = list(passes)

    def run(
        self, model: ir.Model, context: Context | None = None, *, source: io.ModelFile | None = None
    ) -> PipelineResult:
        """Run every pass over ``model`` (changed in place; the result holds the final model).

        ``source`` is the file ``model`` was read from unchanged: its bytes are
        the first verified snapshot (rollback point, reference session, and
        what is saved when no pass changes anything), which saves serializing
        a large model once more.
        """
        context = context or Context()
        notes: list[str] = []
        _infer_shapes(model, notes)
        try:
            snapshot = _Snapshot.of_input(source, context) if source else _Snapshot.of_model(model, context)
        except OnnxoptError as e:
            raise type(e)(f"the input model: {e}") from e
        runner = snapshot.runner
        if context.original is None:
            context.original = snapshot.restore
        dataset = context.dataset or default_random(runner.inputs, context.seed)
        batch = batch_size_for(runner.inputs)
        exact = fixed_batch(runner.inputs) is not None
        feeds = [b.feeds for b in dataset.batches(batch, context.guard_samples, exact=exact)]
        names = runner.output_names
        original_outputs = [runner.run(f) for f in feeds]
        original = ModelStats.of(model)
        state = _State(model, snapshot, original_outputs)
        records: list[PassRecord] = []
        context.progress.start("optimizing", len(self.passes))
        for opt_pass in self.passes:
            records.append(self._run_one(opt_pass, state, feeds, names, context))
            context.progress.advance()
        context.progress.finish()
        drift = _max_rel(agreement(original_outputs, state.outputs, names))
        final = state.good
        return PipelineResult(
            state.model,
            records,
            original,
            ModelStats.of(state.model),
            drift,
            dataset.description,
            notes,
            runner=final.runner,
            unchanged_input=final.input_bytes,
        )

    def _run_one(
        self, opt_pass: OptPass, state: _State, feeds: list[dict[str, np.ndarray]], names: list[str], context: Context
    ) -> PassRecord:
        """Run one pass on ``state`` (advanced, or rolled back) and return its record."""
        params = dataclasses.asdict(opt_pass.config)
        before = ModelStats.of(state.model)
        notes: list[str] = []
        start = time.perf_counter()

        def record(status: str, outcome: PassOutcome | None = None, drift: float = 0.0) -> PassRecord:
            after = before if status == "rolled back" else ModelStats.of(state.model)
            return PassRecord(
                opt_pass.name,
                params,
                status,
                time.perf_counter() - start,
                before,
                after,
                drift,
                outcome.counts if outcome else {},
                outcome.skipped if outcome else [],
                notes,
                outcome.details if outcome and status != "rolled back" else [],
            )

        needed = opt_pass.required_opset()
        if needed and io.opset_version(state.model) < needed:
            old = io.opset_version(state.model)
            state.model = io.upgrade_opset(state.model, needed)
            notes.append(f"opset upgraded {old} -> {needed}")
        opt_pass.context = context  # passes that learn from data reach onnxruntime through it
        try:
            outcome: PassOutcome = opt_pass(state.model)
        except Exception as e:  # a pass bug must not lose the user's model: roll back and say so
            state.model = state.good.restore()
            notes.append(f"pass raised {type(e).__name__}: {_line(e)}")
            return record("rolled back")
        upgraded = bool(notes)
        notes.extend(outcome.notes)
        if not outcome.modified and not upgraded:
            return record("unchanged", outcome)
        try:
            candidate, outputs, drift = self._guard(opt_pass, state.model, state.outputs, feeds, names, context)
        except _GuardFailure as e:
            state.model = state.good.restore()
            notes.append(str(e))
            return record("rolled back", outcome)
        state.good, state.outputs = candidate, outputs
        return record("applied", outcome, drift)

    @staticmethod
    def _guard(
        opt_pass: OptPass,
        model: ir.Model,
        reference: list[list[np.ndarray]],
        feeds: list[dict[str, np.ndarray]],
        names: list[str],
        context: Context,
    ) -> tuple[_Snapshot, list[list[np.ndarray]], float]:
        """Check, load and run ``model``; return its snapshot, guard outputs and drift, or raise ``_GuardFailure``."""
        try:
            frozen = SharedWeightsModel(model)
            frozen.check()
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise _GuardFailure(f"checker rejected the result: {_line(e)}") from e
        except Exception as e:  # serializing a malformed graph raises onnx_ir's own errors
            raise _GuardFailure(f"the result cannot be serialized: {_line(e)}") from e
        try:
            runner = frozen.runner(context.providers)
            outputs = [runner.run(f, names) for f in feeds]
        except OnnxoptError as e:
            raise _GuardFailure(f"onnxruntime rejected the result: {_line(e)}") from e
        try:
            drift = _max_rel(agreement(reference, outputs, names))
        except ValueError as e:
            raise _GuardFailure(str(e)) from e
        if opt_pass.lossless and not drift <= opt_pass.tolerance:
            raise _GuardFailure(
                f"outputs drifted by {drift:.3g} (relative), over the lossless tolerance {opt_pass.tolerance:g}"
            )
        return _Snapshot(frozen.restore, runner), outputs, drift


def _infer_shapes(model: ir.Model, notes: list[str]) -> None:
    """Annotate values with onnx-inferred types and shapes (passes use ranks); best-effort."""
    unknown = annotate_shapes(model)
    if unknown:
        notes.append(f"shape inference left {unknown} values without a shape; passes needing ranks there decline")


class _Snapshot:
    """A verified state of the model: how to get it back, and the session that ran it."""

    def __init__(self, restore: Callable[[], ir.Model], runner: Runner, input_bytes: bytes | None = None) -> None:
        self.restore = restore
        self.runner = runner
        self.input_bytes = input_bytes  # set when this state is the input file itself

    @classmethod
    def of_input(cls, source: io.ModelFile, context: Context) -> _Snapshot:
        """The input file, unchanged: its own bytes are the verified model."""

        def reload() -> ir.Model:
            model = io.to_model(source)
            _infer_shapes(model, [])
            return model

        runner = context.reference or Runner(source.source, providers=context.providers)
        return cls(reload, runner, source.raw if source.self_contained else None)

    @classmethod
    def of_model(cls, model: ir.Model, context: Context) -> _Snapshot:
        frozen = SharedWeightsModel(model)
        return cls(frozen.restore, context.reference or frozen.runner(context.providers))


def _max_rel(results: Sequence[OutputAgreement]) -> float:
    values = [r.max_rel for r in results]
    return float(np.max(values)) if values else 0.0


def _line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
