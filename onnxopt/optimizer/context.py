"""The Context: what the passes of one run share, and the only way they reach onnxruntime.

It is two things kept apart: the run's :class:`RunSettings` (frozen: what the
user asked for -- the data, seed, deployment batch, providers, guard samples,
input shapes, plan) and the pipeline's :class:`RunState` (what it learns and
sets while it runs -- seeded random inputs once decided, the original model
and its outputs, the running pass's position, the quality probes, whether
measurements are carried from a plan). A rerun starts from a fresh state.
Passes see it through :class:`onnxopt.passes.base.PassContext`; every
measurement they need -- activations, the quality probe, per-node profiles,
interleaved latency ratios, per-layer errors -- is a method here.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt import io
from onnxopt.bench.run import paired_ratio
from onnxopt.bench.stats import Ratio
from onnxopt.data import Batch, Dataset, InputShapes, RandomDataset, batch_size_for, default_random
from onnxopt.errors import PassPreconditionError
from onnxopt.evaluate.compare import KnownOutputs
from onnxopt.evaluate.layers import LayerReport, layer_errors
from onnxopt.optimizer.budget import AccuracyBudget, ReadingBudget, SnrBudget
from onnxopt.optimizer.calibration import activations
from onnxopt.optimizer.node_profile import NodeProfile, profile_nodes_interleaved
from onnxopt.optimizer.plan import Plan
from onnxopt.optimizer.quality import QualityProbe
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner, TensorSpec, input_specs

DEFAULT_GUARD_SAMPLES = 64
#: Seconds each model of a per-node profile runs at least (in turn with the others): on a 37 ms model, about
#: 25 runs for each kernel's median.
PROFILE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What one run was asked to do, fixed before any pass runs."""

    dataset: Dataset | None = None  # the user's data; None: seeded random inputs, decided once (RunState)
    seed: int = 0
    guard_samples: int = DEFAULT_GUARD_SAMPLES
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    providers: Sequence[str] = ("CPUExecutionProvider",)
    reference: Runner | None = None  # a session on the input model, if the caller already has one
    batch: int = 1  # the deployment batch size latency decisions are measured at
    input_shapes: InputShapes | None = None  # --input-shape: how random inputs are shaped
    plan: Plan | None = None  # decisions to replay (--plan) or to record (--save-plan)
    metric: str = "auto"  # --metric: how accuracy budgets read the outputs (onnxopt.evaluate.readings)


@dataclasses.dataclass
class RunState:
    """What the pipeline learns and sets while it runs the passes (a rerun starts from a fresh one)."""

    random_data: Dataset | None = None  # seeded random inputs, once decided (the settings have no dataset)
    original: Callable[[], ir.Model] | None = None  # the input model, as the pipeline received it
    original_outputs: KnownOutputs | None = None  # its outputs on the guard's feeds
    pass_index: int = -1  # the recipe position of the pass running now
    # a verified replay: what passes measure only for their log is the plan's (onnxopt.optimizer.verified_replay)
    measurements_carried: bool = False
    probes: dict[tuple[int, int], QualityProbe] = dataclasses.field(default_factory=dict)  # by (limit, skip)


class Context:
    """What the passes of one run share: its :class:`RunSettings` and the pipeline's :class:`RunState`.

    ``Context(settings)``, or the settings' fields by keyword (``Context(dataset=..., guard_samples=4)``).
    The data is the settings' dataset, or -- once :meth:`resolve_dataset` (called by the pipeline before any
    pass) decided it -- seeded random inputs; ``is_random`` says which.
    """

    def __init__(self, settings: RunSettings | None = None, *, state: RunState | None = None, **fields: Any) -> None:
        self.settings = dataclasses.replace(settings or RunSettings(), **fields)
        self.state = state or RunState()

    def rerun(self) -> Context:
        """The same settings from a fresh state: a run of the passes from the start, as if it were the first."""
        fresh = copy.copy(self)
        fresh.state = RunState()
        return fresh

    # the settings (and what the run decided of its data) as passes read them

    @property
    def dataset(self) -> Dataset | None:
        """The run's data: the user's, the seeded random inputs once decided, else None."""
        return self.settings.dataset if self.settings.dataset is not None else self.state.random_data

    @property
    def is_random(self) -> bool:
        """The data is seeded random inputs, not the user's."""
        return self.state.random_data is not None

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def batch(self) -> int:
        return self.settings.batch

    @property
    def providers(self) -> Sequence[str]:
        return self.settings.providers

    @property
    def progress(self) -> Progress:
        return self.settings.progress

    @property
    def metric(self) -> str:
        return self.settings.metric

    @property
    def guard_samples(self) -> int:
        return self.settings.guard_samples

    @property
    def input_shapes(self) -> InputShapes | None:
        return self.settings.input_shapes

    @property
    def plan(self) -> Plan | None:
        return self.settings.plan

    @property
    def reference(self) -> Runner | None:
        return self.settings.reference

    @property
    def measurements_carried(self) -> bool:
        return self.state.measurements_carried

    def resolve_dataset(self, inputs: Sequence[TensorSpec]) -> Dataset:
        """The run's data: the user's, or -- decided here, once -- seeded random inputs shaped by ``inputs``."""
        if self.dataset is not None:
            return self.dataset
        self.state.random_data = default_random(list(inputs), self.seed, self.input_shapes)
        return self.state.random_data

    def data(self, model: ir.Model) -> Dataset:
        """The run's dataset (resolved from ``model``'s inputs if no pipeline did it yet)."""
        return self.dataset if self.dataset is not None else self.resolve_dataset(input_specs(model))

    def activations(
        self,
        model: ir.Model,
        names: Sequence[str],
        limit: int,
        *,
        batch_size: int = 32,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Tensors ``names`` of ``model`` on about ``limit`` samples, batch by batch (only the batches whose index
        ``keep`` accepts, if given): how passes that learn from data (reconstruct, quantize, prune-channels by
        activation) reach onnxruntime."""
        return activations(model, names, self.data(model), limit=limit, batch_size=batch_size, keep=keep)

    def real_samples(self) -> int:
        """How many samples of the user's data the run has (0 for seeded random inputs)."""
        return 0 if self.is_random or self.dataset is None else int(self.dataset.num_samples)

    def data_batches(self, limit: int, *, batch_size: int = 64) -> Iterator[Batch]:
        """About ``limit`` samples of the run's data, batch by batch (the pipeline resolved the data first)."""
        if self.dataset is None:
            raise PassPreconditionError("the Context has no data yet (Pipeline.run resolves it)")
        return self.dataset.batches(batch_size, limit)

    def planned(self) -> dict[str, Any] | None:
        """The running pass's decisions from a replayed plan; None when they are to be measured."""
        return self.plan.decisions_for(self.state.pass_index) if self.plan is not None else None

    def record_decisions(self, pass_name: str, decisions: dict[str, Any]) -> None:
        """Write the running pass's measured decisions into the plan being recorded (if any)."""
        if self.plan is not None:
            self.plan.record(self.state.pass_index, pass_name, decisions)

    def saves_plan(self) -> bool:
        """Whether the plan being recorded is written to a file (``--save-plan``)."""
        return self.plan is not None and not self.plan.replay and self.plan.saved

    def original_model(self) -> ir.Model:
        """A fresh copy of the input model, as the pipeline received it."""
        if self.state.original is None:
            raise PassPreconditionError("the Context has no original model (Pipeline.run sets it)")
        return self.state.original()

    def quality_probe(self, limit: int, *, skip: int = 0) -> QualityProbe:
        """The original model's outputs on about ``limit`` samples (after the data's first ``skip``), to score
        candidates against (accuracy budgets: ``max_drop``). Built once per run, limit and skip."""
        probe = self.state.probes.get((limit, skip))
        if probe is None:
            original = self.original_model()
            known = self.state.original_outputs
            probe = QualityProbe(
                original, self.data(original), limit=limit, providers=self.providers, known=known,
                metric=self.settings.metric, skip=skip,
            )  # fmt: skip
            self.state.probes[(limit, skip)] = probe
        return probe

    def budget(self, max_drop: float, limit: int) -> AccuracyBudget:
        """An accuracy budget of ``max_drop`` on the quality probe over about ``limit`` samples."""
        return AccuracyBudget(self.quality_probe(limit), max_drop)

    def snr_budget(self, reference: ir.Model, max_db_loss: float, limit: int, *, skip: int = 0) -> SnrBudget:
        """A budget of ``max_db_loss`` dB of output SNR beyond ``reference``'s, on about ``limit`` samples (after
        the data's first ``skip``)."""
        return SnrBudget(self.quality_probe(limit, skip=skip), reference, max_db_loss)

    def reading_budget(
        self, reference: ir.Model, max_drop: float, limit: int, *, confidence: float = 0.95, skip: int = 0
    ) -> ReadingBudget:
        """A budget of ``max_drop`` of the task reading beyond ``reference``'s, judged at its upper bound at
        ``confidence``, on about ``limit`` samples (after the data's first ``skip``)."""
        return ReadingBudget(self.quality_probe(limit, skip=skip), reference, max_drop, confidence)

    def profiles(self, models: Sequence[ir.Model], *, batch: int | None = None) -> list[NodeProfile]:
        """Per-node latency of each of ``models`` (which take the same inputs) at ``batch`` (default: the run's
        deployment batch; or the models' fixed batch) on the run's providers, with every onnxruntime
        optimization on (how they will be deployed); the models run in turn, so their times compare
        (:func:`~onnxopt.optimizer.node_profile.profile_nodes_interleaved`)."""
        feeds = self._timing_feeds(models[0], self.batch if batch is None else batch)
        return profile_nodes_interleaved(models, feeds, providers=self.providers, seconds=PROFILE_SECONDS)

    def latency_ratio(
        self, baseline: ir.Model, candidate: ir.Model, *, batch: int | None = None, seconds: float = 1.0
    ) -> Ratio:
        """``candidate``'s latency over ``baseline``'s at ``batch`` (default: the run's deployment batch) on the
        run's first provider, interleaved (:func:`onnxopt.bench.run.paired_ratio`), every onnxruntime
        optimization on."""
        feeds = self._timing_feeds(baseline, self.batch if batch is None else batch)
        with tempfile.TemporaryDirectory(prefix="onnxopt-latency-") as folder:
            paths = [Path(folder) / "baseline.onnx", Path(folder) / "candidate.onnx"]
            for model, path in zip((baseline, candidate), paths, strict=True):
                io.save(model, path)  # external data past the protobuf limit, like any output
            return paired_ratio(paths[0], paths[1], self.providers[0], feeds, seconds=seconds)

    def layer_errors(self, reference: ir.Model, candidate: ir.Model, limit: int = 32) -> LayerReport:
        """Per-layer agreement of ``candidate`` with ``reference`` on about ``limit`` samples of the run's data
        (neither is serialized with its weights)."""
        return layer_errors(reference, candidate, self.data(reference), limit=limit)

    def _timing_feeds(self, model: ir.Model, batch: int) -> dict[str, np.ndarray]:
        """One batch of exactly ``batch`` samples (or the model's fixed batch) to time with: the run's data when
        it has that many, else seeded random inputs (latency does not depend on the values)."""
        specs = input_specs(model)
        size = batch_size_for(specs, batch)
        dataset = self.dataset if self.dataset is not None and self.dataset.num_samples >= size else None
        dataset = dataset or RandomDataset(specs, size, seed=self.seed, shapes=self.input_shapes)
        return next(iter(dataset.batches(size, size, exact=True))).feeds
