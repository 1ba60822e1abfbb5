"""The Context: what the passes of one run share, and the only way they reach onnxruntime.

It holds the run's Dataset (the user's data, or seeded random inputs decided
once by :meth:`Context.resolve_dataset`, flagged ``is_random``), the seed,
progress, the execution providers, the deployment batch, and the original
model. Passes see it through :class:`onnxopt.passes.base.PassContext`; every
measurement they need -- activations, the quality probe, per-node profiles,
interleaved latency ratios, per-layer errors -- is a method here.
"""

from __future__ import annotations

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
from onnxopt.optimizer.budget import AccuracyBudget, SnrBudget
from onnxopt.optimizer.calibration import activations, input_specs
from onnxopt.optimizer.node_profile import NodeProfile, profile_nodes
from onnxopt.optimizer.plan import Plan
from onnxopt.optimizer.quality import QualityProbe
from onnxopt.progress import NullProgress, Progress
from onnxopt.runtime import Runner, TensorSpec

DEFAULT_GUARD_SAMPLES = 64


@dataclasses.dataclass
class Context:
    """What the passes of one run share: data, seed, progress, guard settings, the original model.

    ``dataset`` is the user's data, or ``None`` until :meth:`resolve_dataset` (called by the pipeline
    before any pass) puts seeded random inputs there; ``is_random`` says which.
    """

    dataset: Dataset | None = None
    seed: int = 0
    guard_samples: int = DEFAULT_GUARD_SAMPLES
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    providers: Sequence[str] = ("CPUExecutionProvider",)
    reference: Runner | None = None  # a session on the input model, if the caller already has one
    original: Callable[[], ir.Model] | None = None  # the input model, as the pipeline received it (set by it)
    original_outputs: KnownOutputs | None = None  # its outputs on the guard's feeds (set by the pipeline)
    batch: int = 1  # the deployment batch size latency decisions are measured at
    is_random: bool = False  # the dataset is seeded random inputs, not the user's data
    input_shapes: InputShapes | None = None  # --input-shape: how random inputs are shaped
    plan: Plan | None = None  # decisions to replay (--plan) or to record (--save-plan)
    pass_index: int = -1  # the recipe position of the pass running now (set by the pipeline)
    # a verified replay: what passes measure only for their log is the plan's (onnxopt.optimizer.verified_replay)
    measurements_carried: bool = False
    _probes: dict[int, QualityProbe] = dataclasses.field(default_factory=dict, repr=False)

    def resolve_dataset(self, inputs: Sequence[TensorSpec]) -> Dataset:
        """The run's data: the user's, or -- decided here, once -- seeded random inputs shaped by ``inputs``."""
        if self.dataset is None:
            self.dataset = default_random(list(inputs), self.seed, self.input_shapes)
            self.is_random = True
        return self.dataset

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
        return self.plan.decisions_for(self.pass_index) if self.plan is not None else None

    def record_decisions(self, pass_name: str, decisions: dict[str, Any]) -> None:
        """Write the running pass's measured decisions into the plan being recorded (if any)."""
        if self.plan is not None:
            self.plan.record(self.pass_index, pass_name, decisions)

    def saves_plan(self) -> bool:
        """Whether the plan being recorded is written to a file (``--save-plan``)."""
        return self.plan is not None and not self.plan.replay and self.plan.saved

    def original_model(self) -> ir.Model:
        """A fresh copy of the input model, as the pipeline received it."""
        if self.original is None:
            raise PassPreconditionError("the Context has no original model (Pipeline.run sets it)")
        return self.original()

    def quality_probe(self, limit: int) -> QualityProbe:
        """The original model's outputs on about ``limit`` samples, to score candidates against (accuracy
        budgets: ``max_drop``). Built once per run and limit."""
        probe = self._probes.get(limit)
        if probe is None:
            original = self.original_model()
            probe = QualityProbe(
                original, self.data(original), limit=limit, providers=self.providers, known=self.original_outputs
            )
            self._probes[limit] = probe
        return probe

    def budget(self, max_drop: float, limit: int) -> AccuracyBudget:
        """An accuracy budget of ``max_drop`` on the quality probe over about ``limit`` samples."""
        return AccuracyBudget(self.quality_probe(limit), max_drop)

    def snr_budget(self, reference: ir.Model, max_db_loss: float, limit: int) -> SnrBudget:
        """A budget of ``max_db_loss`` dB of output SNR beyond ``reference``'s, on about ``limit`` samples."""
        return SnrBudget(self.quality_probe(limit), reference, max_db_loss)

    def profile(self, model: ir.Model, *, batch: int = 1) -> NodeProfile:
        """Per-node latency of ``model`` at ``batch`` (or its fixed batch) on the run's providers, with every
        onnxruntime optimization on (how it will be deployed)."""
        return profile_nodes(model, self._timing_feeds(model, batch), providers=self.providers)

    def latency_ratio(self, baseline: ir.Model, candidate: ir.Model, *, batch: int = 1, seconds: float = 1.0) -> Ratio:
        """``candidate``'s latency over ``baseline``'s at ``batch`` on the run's first provider, interleaved
        (:func:`onnxopt.bench.run.paired_ratio`), every onnxruntime optimization on."""
        feeds = self._timing_feeds(baseline, batch)
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
