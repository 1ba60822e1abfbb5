"""Pipeline (pass manager), PassRecord and the per-pass guard.

The pipeline runs configured passes in order over one :class:`onnx_ir.Model`.
After each pass that changed the model, the guard:

1. serializes the graph and runs ``onnx.checker`` with ``full_check``;
2. opens an onnxruntime session (graph optimizations DISABLED) over that
   graph and the model's own weight arrays, shared without copying
   (:mod:`onnxopt.shared_weights`);
3. runs the guard batches and compares with the outputs of the model as it
   was before the pass; a lossless pass must stay within its relative
   tolerance (``max|after - before| <= tol * max|before|`` per output) -- or,
   where rounding alone moves the model's outputs further than that, within
   a few of its rounding floors (:mod:`onnxopt.optimizer.rounding_floor`:
   the drift of one-ulp perturbations of its weights, measured only then),
   and the record says so.

A pass that raises, or fails any of these, is rolled back to the last good
model; the run continues and the :class:`PassRecord` says why.

Lossless passes in a row are verified together: they run one after another and
the guard checks their joint result once, against the strictest tolerance of
the group (each guard run costs the guard batches through the whole model, and
the lossless recipe alone has a dozen passes). Only when that check fails, or a
pass of the group raises, is the group run again from its start, pass by pass,
each verified on its own -- so what is kept and what is rolled back is the same
as verifying every pass, and the records of a group's passes share its drift.

When the run has no data and seeded random inputs cannot run the *original*
model (shape tensors, sequences, strings), step 3 is replaced by a structural
check -- the same output names, element types and shapes -- lossy passes
decline, and the result says that outputs were not compared.

A replay of a plan that recorded its result does not come here: :mod:`onnxopt.optimizer.verified_replay`
starts the run as :meth:`Pipeline.start` does and, on the same guard data, runs the passes unguarded
(:meth:`Pipeline.run_pass`, deferred), checking at the end that it rebuilt the planned model.

A pass whose ``required_opset`` is above the model's gets the model upgraded by
onnx's version converter first; when the converter fails, that pass alone
declines with the converter's reason and the others run at the model's opset.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.data import RandomDataset, batch_size_for, fixed_batch
from onnxopt.errors import OnnxoptError, one_line
from onnxopt.evaluate.agreement import OutputAgreement, agreement
from onnxopt.evaluate.compare import KnownOutputs
from onnxopt.evaluate.reference_check import uninformative_reference
from onnxopt.model_stats import ModelStats
from onnxopt.optimizer.branches import more_feeds_for_branches
from onnxopt.optimizer.context import Context
from onnxopt.optimizer.plan import data_digest
from onnxopt.optimizer.rounding_floor import FLOOR_CAP, FLOOR_FACTOR, lossless_allowance, rounding_floor
from onnxopt.passes.base import Decline, OptPass, PassOutcome
from onnxopt.runtime import Runner
from onnxopt.shapes import annotate_shapes
from onnxopt.shared_weights import SharedWeightsModel


class PassStatus(enum.StrEnum):
    """How a pass ended (a record's ``status``; reports and plans hold its text)."""

    APPLIED = "applied"  # changed the model, and the guard verified it
    UNCHANGED = "unchanged"  # nothing matched, or the pass declined (its declines say why)
    ROLLED_BACK = "rolled back"  # changed the model but failed the guard or raised: undone
    ABORTED = "aborted"  # raised in a verified replay, which then runs again guarded (verified_replay)


@dataclasses.dataclass
class PassRecord:
    """What one pass did and what it cost.

    ``status``: a :class:`PassStatus`. ``declines``: what the pass declined and why.
    ``max_drift``: max relative output change against the model before the pass.
    """

    name: str
    params: dict[str, Any]
    status: PassStatus
    seconds: float
    before: ModelStats
    after: ModelStats
    max_drift: float = 0.0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per-layer rows of the pass
    missed: list[str] = dataclasses.field(default_factory=list)  # budgets the kept result does not meet

    @property
    def skipped(self) -> list[str]:
        """The declines as text (``"where: reason"``), as reports show them."""
        return [str(d) for d in self.declines]

    def to_dict(self) -> dict[str, Any]:
        """The record as the report's JSON holds it: plain values, the declines as text under ``skipped``."""
        plain = {**dataclasses.asdict(self), "status": str(self.status), "declines": self.skipped}
        return {("skipped" if key == "declines" else key): value for key, value in plain.items()}


@dataclasses.dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord]
    original: ModelStats
    final: ModelStats
    max_drift: float  # final model against the original, on the guard data
    guard_data: str
    notes: list[str]
    runner: Runner | None  # an onnxruntime session on the final model, as the guard verified it (None: carried)
    unchanged_input: bytes | None  # the input file's bytes, when no pass changed the model (save them as they are)
    outputs_compared: bool = True  # False: random inputs could not run the model; the guard was structural only
    # the original's and the final model's outputs on the guard's feeds (the evaluation need not run them again)
    guard_outputs: KnownOutputs | None = None
    guard_digest: str = ""  # data_digest of the guard's feeds
    carried: bool = False  # a verified replay: drifts and details are the plan's, for this very model
    diverged: str | None = None  # a replay that did not rebuild the planned model: why (run it again guarded)
    # why the original's outputs on the guard data cannot tell a good rewrite from a bad one (None: they can)
    reference_problem: str | None = None


class _GuardFailure(Exception):
    pass


class PassAborted(Exception):
    """A pass run deferred (not verified on its own) would have to be rolled back: a group verified together
    runs again pass by pass; a verified replay records the pass ``aborted``."""


@dataclasses.dataclass
class Start:
    """What a run of the passes starts from (:meth:`Pipeline.start`)."""

    model: ir.Model
    snapshot: _Snapshot  # the input, verified: the rollback point and the reference session
    original: ModelStats
    data: str  # the run's data, described
    names: list[str]  # the outputs compared
    notes: list[str]
    feeds: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # the guard's batches
    digest: str = ""  # data_digest of the guard's batches
    structural: str | None = None  # why outputs cannot be compared (random inputs do not fit); None: they are

    def structural_only(self, error: OnnxoptError) -> None:
        """Random inputs cannot run the model (``error``): the guard checks structure only, and says so."""
        self.structural = f"random inputs cannot run the model ({one_line(error)})"
        self.feeds, self.digest = [], ""
        self.notes.append(
            f"outputs NOT compared: {self.structural}; each pass was checked structurally only (full checker, an "
            "onnxruntime session, output types and shapes unchanged) and lossy passes were declined; give --data "
            "(or --input-shape) to compare outputs"
        )


@dataclasses.dataclass
class Position:
    """The pipeline's position: the model, its last verified snapshot, and that snapshot's guard outputs."""

    model: ir.Model
    good: _Snapshot
    outputs: list[list[np.ndarray]]
    feeds: list[dict[str, np.ndarray]]  # the guard's batches, the same for every pass
    names: list[str]  # the outputs compared
    structural: str | None = None  # why outputs cannot be compared (random inputs do not fit); None: they are


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
        return self.guarded(self.start(model, context, source), context)

    def start(self, model: ir.Model, context: Context, source: io.ModelFile | None = None) -> Start:
        """What a run of the passes starts from: ``model`` with inferred shapes, its verified snapshot (the
        input's reference session), the run's data resolved, and the guard's batches (with draws for the If
        branches the first ones miss) and their digest -- or, where random inputs cannot run the model, the
        reason the guard is structural only."""
        notes: list[str] = []
        _infer_shapes(model, notes)
        try:
            snapshot = _Snapshot.of_input(source, context) if source else _Snapshot.of_model(model, context)
        except OnnxoptError as e:
            raise type(e)(f"the input model: {e}") from e
        runner = snapshot.runner
        if context.state.original is None:
            context.state.original = snapshot.restore
        dataset = context.resolve_dataset(runner.inputs)
        batch = batch_size_for(runner.inputs)
        exact = fixed_batch(runner.inputs) is not None
        start = Start(model, snapshot, ModelStats.of(model), dataset.description, runner.output_names, notes)
        try:
            feeds = [b.feeds for b in dataset.batches(batch, context.guard_samples, exact=exact)]
            feeds, coverage = more_feeds_for_branches(model, feeds, _extra_draws(context, runner, batch, exact))
            notes += coverage
            start.feeds, start.digest = feeds, data_digest(feeds)
        except OnnxoptError as e:
            if not context.is_random:
                raise  # the user's data does not fit: that is theirs to fix, and the message says how
            start.structural_only(e)
        return start

    def guarded(self, start: Start, context: Context) -> PipelineResult:
        """Run every pass from ``start``, each verified by the guard against the model before it."""
        original_outputs: list[list[np.ndarray]] = []
        if start.structural is None:
            try:
                original_outputs = [start.snapshot.runner.run(f) for f in start.feeds]
                context.state.original_outputs = KnownOutputs.of(start.names, start.feeds, original_outputs)
            except OnnxoptError as e:
                if not context.is_random:
                    raise  # the user's data does not fit: that is theirs to fix, and the message says how
                start.structural_only(e)
        names, feeds, structural = start.names, start.feeds, start.structural
        state = Position(start.model, start.snapshot, original_outputs, feeds, names, structural)
        records: list[PassRecord] = []
        for group in self.groups():
            records.extend(self._run_group(group, state, context))
        context.progress.finish()
        drift = _max_rel(agreement(original_outputs, state.outputs, names))
        final = state.good
        if final.input_bytes is None:
            declare_shapes(state.model)
        return PipelineResult(
            state.model,
            records,
            start.original,
            ModelStats.of(state.model),
            drift,
            start.data,
            start.notes,
            runner=final.runner,
            unchanged_input=final.input_bytes,
            outputs_compared=structural is None,
            guard_outputs=None if structural else KnownOutputs.of(names, feeds, original_outputs, state.outputs),
            guard_digest=start.digest,
            reference_problem=uninformative_reference(names, original_outputs) if structural is None else None,
        )

    def groups(self) -> Iterator[range]:
        """The recipe positions in the runs the guard verifies at once: a lossy pass alone, lossless passes in
        a row together."""
        index = 0
        while index < len(self.passes):
            end = index + 1
            while self.passes[index].lossless and end < len(self.passes) and self.passes[end].lossless:
                end += 1
            yield range(index, end)
            index = end

    def _run_group(self, indices: range, state: Position, context: Context) -> list[PassRecord]:
        """Run the passes at ``indices`` (one pass, or lossless passes in a row verified together) on ``state``
        and return their records."""
        if len(indices) == 1:
            return [self.run_pass(indices[0], state, context)]
        start_good, start_outputs = state.good, state.outputs
        try:
            pending = [self.run_pass(i, state, context, deferred=True) for i in indices]
            applied = [r for r in pending if r.status == PassStatus.APPLIED]
            if not applied:
                return pending
            started = time.perf_counter()
            tolerance = min(self.passes[i].tolerance for i in indices)
            candidate, outputs, drift = self._verify(state, context, tolerance)
        except (PassAborted, _GuardFailure):  # find the culprit: again from the group's start, pass by pass
            state.model, state.good, state.outputs = start_good.restore(), start_good, start_outputs
            return [self.run_pass(i, state, context) for i in indices]
        state.good, state.outputs = candidate, outputs
        for r in applied:
            r.max_drift = drift
            r.notes.extend([candidate.widened] if candidate.widened else [])
        applied[-1].seconds += time.perf_counter() - started  # the guard's time goes to the last pass it verified
        return pending

    def _verify(
        self, state: Position, context: Context, tolerance: float
    ) -> tuple[_Snapshot, list[list[np.ndarray]], float]:
        """The guard on ``state.model`` (structural when outputs cannot be compared); ``tolerance`` applies to
        lossless passes (``inf`` for lossy ones)."""
        if state.structural is not None:
            return self._structural_guard(state.model, state.good.runner, context)
        return self._guard(
            state.model, state.outputs, state.feeds, state.names, context, tolerance, lambda: _floor(state, context)
        )

    def run_pass(self, index: int, state: Position, context: Context, *, deferred: bool = False) -> PassRecord:
        """Run the pass at ``index`` on ``state`` (advanced, or rolled back) under its progress bar and return its
        record. ``deferred``: the pass is not verified (its record says ``applied`` if it changed the model) and
        anything that would roll it back raises :class:`PassAborted` instead (the last good model is from before
        the group, or a verified replay checks the model only at its end)."""
        opt_pass = self.passes[index]
        context.state.pass_index = index  # a plan's decisions are keyed by recipe position
        # a bar per pass (a pass may show its own steps in between): which pass runs, of how many
        context.progress.start(f"{opt_pass.name} ({index + 1}/{len(self.passes)})", len(self.passes))
        context.progress.advance(index)
        try:
            return self._apply_pass(opt_pass, state, context, deferred)
        finally:
            context.progress.advance()

    def _apply_pass(self, opt_pass: OptPass, state: Position, context: Context, deferred: bool) -> PassRecord:
        """:meth:`run_pass` without the progress bar."""
        params = dataclasses.asdict(opt_pass.config)
        before = ModelStats.of(state.model)
        notes: list[str] = []
        start = time.perf_counter()

        def record(status: PassStatus, outcome: PassOutcome | None = None, drift: float = 0.0) -> PassRecord:
            rolled_back = status == PassStatus.ROLLED_BACK
            # a pass that rolled back or changed nothing leaves the model as it came (restored if need be)
            after = before if status != PassStatus.APPLIED else ModelStats.of(state.model)
            return PassRecord(
                opt_pass.name,
                params,
                status,
                time.perf_counter() - start,
                before,
                after,
                drift,
                outcome.counts if outcome else {},
                outcome.declines if outcome else [],
                notes,
                outcome.details if outcome and not rolled_back else [],
                outcome.missed if outcome and not rolled_back else [],
            )

        if state.structural is not None and not opt_pass.lossless:  # declined before anything (an upgrade) changes
            reason = f"a lossy pass needs outputs to compare, and {state.structural}; give --data"
            return record(PassStatus.UNCHANGED, PassOutcome(state.model, False, declines=[_whole_model(reason)]))
        needed = opt_pass.required_opset(state.model)
        if needed and io.opset_version(state.model) < needed:
            old = io.opset_version(state.model)
            try:
                state.model = io.upgrade_opset(state.model, needed)
            except OnnxoptError as e:  # only this pass declines: the others run at the model's own opset
                if deferred:
                    raise PassAborted from e
                state.model = state.good.restore()
                outcome = PassOutcome(
                    state.model, False, declines=[_whole_model(f"needs opset {needed}; {one_line(e)}")]
                )
                return record(PassStatus.UNCHANGED, outcome)
            notes.append(f"opset upgraded {old} -> {needed}")
        try:
            with opt_pass.bound(context):  # passes that learn from data reach onnxruntime through it
                outcome: PassOutcome = opt_pass(state.model)
        except Exception as e:  # a pass bug must not lose the user's model: roll back and say so
            if deferred:
                raise PassAborted from e
            state.model = state.good.restore()
            notes.append(f"pass raised {type(e).__name__}: {one_line(e)}")
            return record(PassStatus.ROLLED_BACK)
        upgraded = bool(notes)
        notes.extend(outcome.notes)
        if not outcome.modified:
            if upgraded or ModelStats.of(state.model) != before:
                # a pass that declined leaves the model as it came: not upgraded for it, nor half-rewritten
                if deferred:  # the last good model is from before the group: find this pass on its own
                    raise PassAborted
                state.model = state.good.restore()
                if upgraded:
                    notes[0] = f"{notes[0]} for this pass, undone: it changed nothing"
            return record(PassStatus.UNCHANGED, outcome)
        if deferred:
            return record(PassStatus.APPLIED, outcome)
        try:
            tolerance = opt_pass.tolerance if opt_pass.lossless else float("inf")
            candidate, outputs, drift = self._verify(state, context, tolerance)
        except _GuardFailure as e:
            state.model = state.good.restore()
            notes.append(str(e))
            return record(PassStatus.ROLLED_BACK, outcome)
        state.good, state.outputs = candidate, outputs
        notes.extend([candidate.widened] if candidate.widened else [])
        return record(PassStatus.APPLIED, outcome, drift)

    @staticmethod
    def _structural_guard(
        model: ir.Model, previous: Runner, context: Context
    ) -> tuple[_Snapshot, list[list[np.ndarray]], float]:
        """What can be verified without outputs: the full checker, an onnxruntime session, and the same output
        names, element types and shapes as the model before the pass."""
        frozen = Pipeline._checked(model)
        try:
            runner = frozen.runner(context.providers)
        except OnnxoptError as e:
            raise _GuardFailure(f"onnxruntime rejected the result: {one_line(e)}") from e
        before = [(s.name, s.dtype, _fixed_dims(s.shape)) for s in previous.outputs]
        after = [(s.name, s.dtype, _fixed_dims(s.shape)) for s in runner.outputs]
        if before != after:
            raise _GuardFailure(f"the outputs' names, types or shapes changed: {before} -> {after}")
        return _Snapshot(frozen.restore, runner), [], 0.0

    @staticmethod
    def _checked(model: ir.Model) -> SharedWeightsModel:
        """``model`` frozen for onnxruntime, after the full checker; ``_GuardFailure`` if it fails."""
        try:
            frozen = SharedWeightsModel(model)
            frozen.check()
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise _GuardFailure(f"checker rejected the result: {one_line(e)}") from e
        except Exception as e:  # serializing a malformed graph raises onnx_ir's own errors
            raise _GuardFailure(f"the result cannot be serialized: {one_line(e)}") from e
        return frozen

    @staticmethod
    def _guard(
        model: ir.Model,
        reference: list[list[np.ndarray]],
        feeds: list[dict[str, np.ndarray]],
        names: list[str],
        context: Context,
        tolerance: float,
        floor: Callable[[], float] | None = None,
    ) -> tuple[_Snapshot, list[list[np.ndarray]], float]:
        """Check, load and run ``model``; return its snapshot, guard outputs and drift (at most ``tolerance``,
        relative, or the allowance of the rounding floor that ``floor`` measures when it is asked: only for a
        drift over ``tolerance`` and under the floor's cap), or raise ``_GuardFailure``."""
        frozen = Pipeline._checked(model)
        try:
            runner = frozen.runner(context.providers)
            outputs = [runner.run(f, names) for f in feeds]
        except OnnxoptError as e:
            raise _GuardFailure(f"onnxruntime rejected the result: {one_line(e)}") from e
        try:
            drift = _max_rel(agreement(reference, outputs, names))
        except ValueError as e:
            raise _GuardFailure(str(e)) from e
        snapshot = _Snapshot(frozen.restore, runner)
        if math.isfinite(tolerance) and not drift <= tolerance:
            measured = floor() if floor is not None and drift <= FLOOR_CAP else None  # only when it could help
            if measured is None or not drift <= lossless_allowance(tolerance, measured):
                known = "" if measured is None else f" (the model's rounding floor is {measured:.3g})"
                raise _GuardFailure(
                    f"outputs drifted by {drift:.3g} (relative), over the lossless tolerance {tolerance:g}{known}"
                )
            snapshot.widened = (
                f"outputs drifted by {drift:.3g} (relative), over the tolerance {tolerance:g} but within "
                f"{FLOOR_FACTOR:g}x the model's rounding floor {measured:.3g} (what moving each weight by one ulp "
                "does to its outputs): float rounding"
            )
        return snapshot, outputs, drift


def _extra_draws(
    context: Context, runner: Runner, batch: int, exact: bool
) -> Callable[[int], list[dict[str, np.ndarray]]]:
    """More guard batches for If branches the first ones missed: other seeds of random data; none from the
    user's data (all of what the guard may use of it was used)."""

    def draw(k: int) -> list[dict[str, np.ndarray]]:
        if not context.is_random:
            return []
        extra = RandomDataset(runner.inputs, batch, seed=context.seed + 1 + k, shapes=context.input_shapes)
        return [b.feeds for b in extra.batches(batch, batch, exact=exact)]

    return draw


def declare_shapes(model: ir.Model) -> None:
    """Before a changed model is written: the values its passes created get their shapes as a later run's start
    would infer them, so a model built in two runs declares the shapes one run of the same passes declares,
    and a plan's digest of the model is taken after it."""
    _infer_shapes(model, [])


def _infer_shapes(model: ir.Model, notes: list[str]) -> None:
    """Annotate values with onnx-inferred types and shapes (passes use ranks); best-effort."""
    unknown = annotate_shapes(model)
    if unknown:
        notes.append(
            f"shape inference left {unknown} intermediate values without a static shape (sizes known only at run "
            "time); passes that need a rank there decline"
        )


class _Snapshot:
    """A verified state of the model: how to get it back, and the session that ran it."""

    def __init__(self, restore: Callable[[], ir.Model], runner: Runner, input_bytes: bytes | None = None) -> None:
        self.restore = restore
        self.runner = runner
        self.input_bytes = input_bytes  # set when this state is the input file itself
        self.floor: float | None = None  # its rounding floor on the guard's feeds, once measured
        self.widened: str | None = None  # why the guard accepted it beyond its pass's tolerance (None: it did not)

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


def _fixed_dims(shape: tuple[int | str | None, ...] | None) -> tuple[int | None, ...] | None:
    """A shape as the structural guard compares it: the rank and the fixed sizes; a symbolic or unknown size is
    None whatever its name (shape inference names the dims it cannot size, ``unk__0``, after a rewrite)."""
    return None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)


def _floor(state: Position, context: Context) -> float:
    """The rounding floor of the last verified model (the one a pass's drift is measured from), measured once."""
    good = state.good
    if good.floor is None:
        good.floor = rounding_floor(
            good.restore, state.feeds, state.outputs, state.names, providers=context.providers, seed=context.seed
        )
    return good.floor


def _whole_model(reason: str) -> Decline:
    return Decline(Decline.MODEL, reason)


def _max_rel(results: Sequence[OutputAgreement]) -> float:
    values = [r.max_rel for r in results]
    return float(np.max(values)) if values else 0.0
