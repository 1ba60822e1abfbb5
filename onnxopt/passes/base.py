"""What every onnxopt pass is: an onnx_ir in-place pass with a config and a result.

A pass subclasses :class:`OptPass`, names itself in ``name`` (the recipe
key, e.g. ``fold-bn``), states its contract in its docstring, is configured
by a frozen dataclass ``Config`` validated on construction, and returns a
:class:`PassOutcome` carrying counts of what it rewrote and the reasons for
what it declined. Passes never run onnxruntime: the pipeline verifies them, and
passes that learn from data ask the Context (``Context.activations``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, ClassVar

import onnx_ir as ir

#: ``node.meta`` key: indices of the original output channels a pruned source (or depthwise Conv) kept.
KEPT_OUTPUTS = "onnxopt.kept_outputs"
#: ``node.meta`` key: set on a layer whose weight lost input slices (``reconstruct`` refits those).
INPUTS_PRUNED = "onnxopt.inputs_pruned"


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """Configuration of a pass that takes no parameters."""


@dataclasses.dataclass
class PassOutcome(ir.passes.PassResult):
    """A pass's result: the model, whether it changed, and what was done or declined."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per-layer rows, for the report
    notes: list[str] = dataclasses.field(default_factory=list)  # facts about the run (a detected target, a budget)


class OptPass(ir.passes.InPlacePass):
    """Base class of onnxopt passes.

    Class attributes a subclass sets:
      * ``name``: recipe key (``fold-bn``).
      * ``Config``: frozen dataclass of parameters (``NoConfig`` if none).
      * ``lossless``: True when outputs must be preserved up to float rounding;
        the pipeline then holds the pass to ``tolerance`` (relative to the
        output's magnitude).
      * ``min_opset``: the default-domain opset the pass needs; the pipeline
        upgrades older models first and records it.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    lossless: ClassVar[bool] = True
    tolerance: ClassVar[float] = 1e-4
    min_opset: ClassVar[int | None] = None

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.context: Any = None  # the pipeline's Context, set before each run (data, the original model)

    def require_context(self) -> Any:
        """The pipeline's Context, for passes that learn from data; a clear error outside a pipeline."""
        if self.context is None:
            raise RuntimeError(f"pass '{self.name}' needs data: run it through a Pipeline (which sets its Context)")
        return self.context

    def required_opset(self) -> int | None:
        """The default-domain opset this configuration needs (``min_opset`` unless a parameter raises it)."""
        return self.min_opset

    @classmethod
    def summary(cls) -> str:
        """First line of the pass's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def call(self, model: ir.Model) -> PassOutcome:
        self._counts = Counter()
        self._skipped = []
        self._details: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._modified = False
        self.rewrite(model)
        modified = self._modified or any(self._counts.values())
        return PassOutcome(
            model, modified, dict(self._counts), list(self._skipped), list(self._details), list(self._notes)
        )

    def rewrite(self, model: ir.Model) -> None:
        """Rewrite ``model`` in place, calling :meth:`count` and :meth:`skip`."""
        raise NotImplementedError

    def count(self, what: str, n: int = 1) -> None:
        """Record ``n`` rewrites of kind ``what`` (any non-zero count marks the model modified)."""
        self._counts[what] += n

    def mark_modified(self) -> None:
        """Say the model changed even if no count says so (the guard then verifies it)."""
        self._modified = True

    def detail(self, **row: Any) -> None:
        """Record one row of per-layer detail (e.g. ``layer=..., clipped=0.01``) for the report."""
        self._details.append(row)

    def note(self, text: str) -> None:
        """Record a fact about this run for the report (a detected target, a budget's outcome)."""
        self._notes.append(text)

    def skip(self, where: str, reason: str) -> None:
        """Record that ``where`` was declined and why."""
        self._skipped.append(f"{where}: {reason}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
