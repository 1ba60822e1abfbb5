"""Verified replay: a plan's measurements carried over to a replay that rebuilt exactly the planned model.

A replay (``--plan``) makes the same decisions, so on the same data it builds
the same model -- and the same bytes measure the same on the same data. What
the planning run measured about its result (each pass's guard drift, the
quantizer's output SNRs, the final comparison) therefore holds for the
replay's result *when the two are identical*, and running it all again only
costs time: on a ResNet-50 the guard and the comparison were about half of a
replay.

So a planning run stores a :class:`~onnxopt.optimizer.plan.Verification` in
the plan: the sha256 of its final model, digests of the data its guard and its
evaluation ran on, each pass's outcome and the comparison. :func:`run` starts
as the pipeline does (:meth:`Pipeline.start`); when the guard data has the
planned digest it runs the passes without the guard (no reference outputs, no
session per pass), and passes skip measurements that only go to their log
(``Context.measurements_carried``); else it is the guarded pipeline.
At the end the replay's model is hashed: the same sha256 -- and every pass
with the same status -- and the plan's measurements are the replay's, said so
in the summary; anything else (another onnxruntime, onnxopt or data, a pass
that raised or could not be upgraded to: ``aborted``; one the guard would have rolled back shows as another
sha256) and the result says why
(``diverged``): the caller runs again with the guard, from a fresh run state,
measured from scratch, saying why. Nothing unverified is ever reported.
"""

from __future__ import annotations

import dataclasses
import math
import time

import onnx_ir as ir

from onnxopt import io
from onnxopt.model_stats import ModelStats
from onnxopt.optimizer.context import Context
from onnxopt.optimizer.pipeline import (
    PassAborted,
    PassRecord,
    PassStatus,
    Pipeline,
    PipelineResult,
    Position,
    Start,
    declare_shapes,
)
from onnxopt.optimizer.plan import Verification, model_sha256


def run(pipeline: Pipeline, model: ir.Model, context: Context, *, source: io.ModelFile | None = None) -> PipelineResult:
    """``pipeline`` over ``model``: unguarded when the run replays a plan that verified its result on the same
    guard data (the result then carries the plan's measurements, or says why it ``diverged``), else guarded
    (:meth:`Pipeline.run`)."""
    start = pipeline.start(model, context, source)
    verification = _verification(context, start.digest)
    if verification is None:
        return pipeline.guarded(start, context)
    state = Position(start.model, start.snapshot, [], start.feeds, start.names)
    context.state.measurements_carried = True
    records: list[PassRecord] = []
    try:
        for index in range(len(pipeline.passes)):
            records.append(_run_unguarded(pipeline, index, state, context))
            if records[-1].status == PassStatus.ABORTED:  # the planned model cannot come out of this run
                break
    finally:
        context.progress.finish()
        context.state.measurements_carried = False
    return _carried(start, state, records, verification)


def _verification(context: Context, guard_digest: str) -> Verification | None:
    """The planned result's measurements, when this run replays a plan that has them, on the same guard data."""
    plan = context.plan
    if plan is None or not plan.replay or not plan.verification:
        return None
    verification = Verification.from_dict(plan.verification)
    return verification if verification.guard_data == guard_digest else None


def _run_unguarded(pipeline: Pipeline, index: int, state: Position, context: Context) -> PassRecord:
    """A pass of a verified replay: not verified; one that raises (or cannot be upgraded to) is recorded as
    ``aborted`` -- the planned model cannot have come out, and the run is repeated with the guard."""
    started = time.perf_counter()
    try:
        return pipeline.run_pass(index, state, context, deferred=True)
    except PassAborted:
        stats = ModelStats.of(state.model)
        opt_pass = pipeline.passes[index]
        params = dataclasses.asdict(opt_pass.config)
        return PassRecord(opt_pass.name, params, PassStatus.ABORTED, time.perf_counter() - started, stats, stats)


def _carried(start: Start, state: Position, records: list[PassRecord], verification: Verification) -> PipelineResult:
    """The result of an unguarded replay: the plan's measurements if it rebuilt the planned model, else
    ``diverged`` says why."""
    aborted = (f"{r.name} raised or could not be upgraded" for r in records if r.status == PassStatus.ABORTED)
    applied = any(r.status == PassStatus.APPLIED for r in records)
    if applied:
        declare_shapes(state.model)  # as the guarded run that made the plan did before its digest
    why = next(aborted, None) or verification.mismatch(model_sha256(state.model), records)
    if why is None:
        verification.carry(records)
    return PipelineResult(
        state.model,
        records,
        start.original,
        ModelStats.of(state.model),
        verification.max_drift if why is None else math.nan,
        start.data,
        start.notes,
        runner=None,
        unchanged_input=None if applied else state.good.input_bytes,
        guard_digest=start.digest,
        carried=why is None,
        diverged=why,
    )
