"""What every onnxopt pass is: an onnx_ir in-place pass with a config, a log, and a typed view of the run.

A pass subclasses :class:`OptPass`, names itself in ``name`` (the recipe
key, e.g. ``fold-bn``), states its contract in its docstring, is configured
by a frozen dataclass ``Config`` validated on construction, and writes what it
rewrote and what it declined (a :class:`Decline`: where, and why) to the
:class:`PassLog` that :meth:`OptPass.rewrite` receives; the log becomes its
:class:`PassOutcome`. Passes never run onnxruntime: the pipeline verifies
them, and passes that learn from data ask the run's Context -- bound around
each call (:meth:`OptPass.bound`) -- through the :class:`PassContext`
protocol (activations, the quality probe, timing at the run's batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import onnx_ir as ir

from onnxopt.errors import PassPreconditionError

if TYPE_CHECKING:
    from onnxopt.bench.stats import Ratio
    from onnxopt.data.batching import Batch
    from onnxopt.evaluate.layers import LayerReport
    from onnxopt.optimizer.budget import AccuracyBudget
    from onnxopt.optimizer.node_profile import NodeProfile
    from onnxopt.optimizer.quality import QualityProbe
    from onnxopt.progress import Progress

#: ``node.meta`` key: indices of the original output channels a pruned source (or depthwise Conv) kept.
KEPT_OUTPUTS = "onnxopt.kept_outputs"
#: ``node.meta`` key: set on a layer whose weight lost input slices (``reconstruct`` refits those).
INPUTS_PRUNED = "onnxopt.inputs_pruned"


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Configuration of a pass that takes no parameters."""


@dataclasses.dataclass(frozen=True)
class Decline:
    """What a pass declined and why: ``where`` names the node, tensor or group (``model`` for the whole model),
    ``reason`` says why. ``str()`` gives ``"where: reason"``, the text reports and summaries show."""

    where: str
    reason: str

    #: ``where`` of a decline about the whole model (the pass did nothing anywhere for this reason)
    MODEL: ClassVar[str] = "model"

    @property
    def whole_model(self) -> bool:
        return self.where == self.MODEL

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclasses.dataclass
class PassOutcome(ir.passes.PassResult):
    """A pass's result: the model, whether it changed, and what was done or declined."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per-layer rows, for the report
    notes: list[str] = dataclasses.field(default_factory=list)  # facts about the run (a detected target, a budget)
    missed: list[str] = dataclasses.field(default_factory=list)  # budgets the result does not meet (exit 3)

    @property
    def skipped(self) -> list[str]:
        """The declines as text (``"where: reason"``)."""
        return [str(d) for d in self.declines]


@dataclasses.dataclass
class PassLog:
    """What one run of a pass did: counts of rewrites, declines with reasons, per-layer rows, notes.

    A budget search prunes or quantizes trial copies with a throwaway log, so nothing a trial
    records reaches the pass's result.
    """

    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    missed: list[str] = dataclasses.field(default_factory=list)
    modified: bool = False

    def count(self, what: str, n: int = 1) -> None:
        """Record ``n`` rewrites of kind ``what`` (any non-zero count marks the model modified)."""
        self.counts[what] += n

    def mark_modified(self) -> None:
        """Say the model changed even if no count says so (the guard then verifies it)."""
        self.modified = True

    def detail(self, **row: Any) -> None:
        """Record one row of per-layer detail (e.g. ``layer=..., clipped=0.01``) for the report."""
        self.details.append(row)

    def note(self, text: str) -> None:
        """Record a fact about this run for the report (a detected target, a budget's outcome)."""
        self.notes.append(text)

    def miss(self, reason: str) -> None:
        """Record that the result misses a budget the pass was given: the run then exits 3 (never silently)."""
        self.missed.append(reason)

    def skip(self, where: str, reason: str) -> None:
        """Record that ``where`` was declined and why (a :class:`Decline`)."""
        self.declines.append(Decline(where, reason))

    def decline(self, declined: Decline) -> None:
        """Record a :class:`Decline` a match helper returned."""
        self.declines.append(declined)

    @property
    def skipped(self) -> list[str]:
        """The declines so far as text (``"where: reason"``)."""
        return [str(d) for d in self.declines]

    def outcome(self, model: ir.Model) -> PassOutcome:
        modified = self.modified or any(self.counts.values())
        return PassOutcome(
            model, modified, dict(self.counts), list(self.declines), list(self.details), list(self.notes),
            list(self.missed),
        )  # fmt: skip


class PassContext(Protocol):
    """What a pass may use of the run (implemented by :class:`onnxopt.optimizer.context.Context`)."""

    seed: int
    batch: int  # the deployment batch size latency decisions are measured at
    providers: Sequence[str]
    is_random: bool  # the run's data is seeded random inputs, not the user's
    progress: Progress  # long passes report their steps (distill: each epoch's batches)
    # a verified replay: measurements that only go to the pass's log are the plan's, not to be taken again
    measurements_carried: bool
    metric: str  # --metric: how accuracy budgets read the outputs (onnxopt.evaluate.readings.METRICS)

    def activations(
        self,
        model: ir.Model,
        names: Sequence[str],
        limit: int,
        *,
        batch_size: int = 32,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Tensors ``names`` of ``model`` on about ``limit`` samples of the run's data, batch by batch (only the
        batch indices ``keep`` accepts, if given)."""
        ...

    def original_model(self) -> ir.Model:
        """A fresh copy of the model the pipeline received."""
        ...

    def real_samples(self) -> int:
        """How many samples of the user's data the run has (0 for seeded random inputs)."""
        ...

    def data_batches(self, limit: int, *, batch_size: int = 64) -> Iterator[Batch]:
        """About ``limit`` samples of the run's data (feeds and labels), batch by batch."""
        ...

    def planned(self) -> dict[str, Any] | None:
        """This pass's decisions from a replayed plan (``--plan``); None when they are to be measured."""
        ...

    def record_decisions(self, pass_name: str, decisions: dict[str, Any]) -> None:
        """Record this pass's measured decisions for ``--save-plan`` (JSON-serializable values)."""
        ...

    def saves_plan(self) -> bool:
        """Whether this run's decisions are written to a plan file (``--save-plan``): what only a replay needs
        (bulky data) is recorded then alone."""
        ...

    def quality_probe(self, limit: int, *, skip: int = 0) -> QualityProbe:
        """The original's outputs on about ``limit`` samples (after the data's first ``skip``), to score
        candidates (accuracy budgets)."""
        ...

    def budget(self, max_drop: float, limit: int) -> AccuracyBudget:
        """An accuracy budget (``max_drop`` of the quality probe's metric) and the searches that spend it."""
        ...

    def snr_budget(self, reference: ir.Model, max_db_loss: float, limit: int, *, skip: int = 0) -> AccuracyBudget:
        """A budget of ``max_db_loss`` dB of output SNR beyond ``reference``'s (weights-only quantization)."""
        ...

    def reading_budget(
        self, reference: ir.Model, max_drop: float, limit: int, *, confidence: float = 0.95, skip: int = 0
    ) -> AccuracyBudget:
        """A budget of ``max_drop`` of the task reading beyond ``reference``'s (weights-only quantization), judged
        at its upper bound at ``confidence``."""
        ...

    def profiles(self, models: Sequence[ir.Model], *, batch: int | None = None) -> list[NodeProfile]:
        """Per-node latency of each of ``models`` at ``batch`` (default: the run's ``batch``), every onnxruntime
        optimization on, the models run in turn (their times compare)."""
        ...

    def latency_ratio(
        self, baseline: ir.Model, candidate: ir.Model, *, batch: int | None = None, seconds: float = 1.0
    ) -> Ratio:
        """``candidate``'s latency over ``baseline``'s at ``batch`` (default: the run's ``batch``), interleaved."""
        ...

    def layer_errors(self, reference: ir.Model, candidate: ir.Model, limit: int = 32) -> LayerReport:
        """Per-layer agreement of ``candidate`` with ``reference`` on the run's data."""
        ...


class OptPass(ir.passes.InPlacePass):
    """Base class of onnxopt passes.

    Class attributes a subclass sets:
      * ``name``: recipe key (``fold-bn``).
      * ``Config``: frozen dataclass of parameters (``NoConfig`` if none).
      * ``lossless``: True when outputs must be preserved up to float rounding;
        the pipeline then holds the pass to ``tolerance`` (relative to the
        output's magnitude).
      * ``learns_from_data``: True when the result depends on the data it sees (calibration,
        refitting, data-driven importance); on random inputs the run then warns.
      * ``min_opset``: the default-domain opset the pass needs; the pipeline
        upgrades older models first and records it.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    lossless: ClassVar[bool] = True
    learns_from_data: ClassVar[bool] = False
    tolerance: ClassVar[float] = 1e-4
    min_opset: ClassVar[int | None] = None

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.context: PassContext | None = None  # the run's Context while bound (:meth:`bound`), else None

    @contextlib.contextmanager
    def bound(self, context: PassContext | None) -> Iterator[OptPass]:
        """Run this pass with ``context`` as its view of the run (the pipeline binds it around each call);
        the pass forgets it on leaving, so no run's data outlives the run."""
        previous, self.context = self.context, context
        try:
            yield self
        finally:
            self.context = previous

    def require_context(self) -> PassContext:
        """The run's Context, for passes that learn from data; a typed error outside a pipeline."""
        if self.context is None:
            raise PassPreconditionError(
                f"pass '{self.name}' needs data: run it through a Pipeline (which binds its Context)"
            )
        return self.context

    def required_opset(self, model: ir.Model) -> int | None:
        """The default-domain opset this configuration needs on ``model`` (``min_opset`` unless a parameter
        raises it, or the model holds nothing the pass would touch at an older opset)."""
        return self.min_opset

    @classmethod
    def summary(cls) -> str:
        """First line of the pass's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def call(self, model: ir.Model) -> PassOutcome:
        log = PassLog()
        self.rewrite(model, log)
        return log.outcome(model)

    def rewrite(self, model: ir.Model, log: PassLog) -> None:
        """Rewrite ``model`` in place, recording what was done and declined in ``log``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
