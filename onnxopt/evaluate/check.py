"""Pass/fail checks of a comparison, as Polygraphy's ``--atol``/``--rtol`` users work.

:class:`Thresholds` says what an output must meet; :func:`check_outputs` lists each output that misses one.

* ``atol`` / ``rtol``: per element, as ``numpy.allclose``: ``|cand - ref| <= atol + rtol * |ref|`` for every
  element of the output (an unset one counts as 0). Streamed batch by batch (:class:`ToleranceAccumulator`):
  memory does not grow with the data. Identical non-finite values agree (NaN with NaN, inf with inf); a
  non-finite value on one side only breaks any tolerance.
* ``min_snr``: the output's SNR in dB (signal: the reference; noise: ``cand - ref``) at least this.
* ``min_top1``: the fraction of samples whose arg-max class agrees at least this; checked only on
  classifier-shaped outputs (``[N, C]``, or ``[N, C, 1, ...]``), where top-1 agreement is defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxopt.errors import OnnxoptError
from onnxopt.evaluate.agreement import OutputAgreement


@dataclass(frozen=True)
class Thresholds:
    """What every compared output must meet; ``None`` checks nothing. Impossible values raise at once."""

    atol: float | None = None
    rtol: float | None = None
    min_snr: float | None = None  # dB
    min_top1: float | None = None  # agreement fraction, in [0, 1]

    def __post_init__(self) -> None:
        for flag, value in (("--atol", self.atol), ("--rtol", self.rtol), ("--min-snr", self.min_snr)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise OnnxoptError(f"{flag} must be a finite number, not {value!r}")
        for flag, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None and value < 0:
                raise OnnxoptError(f"{flag} must be 0 or more, not {value:g}")
        if self.min_top1 is not None and not (isinstance(self.min_top1, (int, float)) and 0 <= self.min_top1 <= 1):
            raise OnnxoptError(f"--min-top1 is a fraction of samples, in [0, 1], not {self.min_top1!r}")

    @property
    def given(self) -> bool:
        """Whether any threshold is set."""
        return any(v is not None for v in (self.atol, self.rtol, self.min_snr, self.min_top1))

    @property
    def tolerance(self) -> tuple[float, float] | None:
        """``(atol, rtol)`` of the per-element check (an unset one 0), or None when neither is set."""
        if self.atol is None and self.rtol is None:
            return None
        return (float(self.atol or 0.0), float(self.rtol or 0.0))


@dataclass(frozen=True)
class ToleranceResult:
    """How one output met ``|cand - ref| <= atol + rtol * |ref|``: elements checked and broken, and the element
    that broke it worst (largest ``|cand - ref| / allowed``; all 0 when none broke it)."""

    elements: int
    violations: int
    worst_diff: float = 0.0  # |cand - ref| at the worst element (inf: non-finite on one side)
    worst_reference: float = 0.0  # ref there
    worst_allowed: float = 0.0  # atol + rtol * |ref| there


class ToleranceAccumulator:
    """Streaming per-element tolerance check of one output (the worst violation kept, nothing else)."""

    def __init__(self, atol: float, rtol: float) -> None:
        self.atol = atol
        self.rtol = rtol
        self.elements = 0
        self.violations = 0
        self.worst_score = 1.0  # |diff| / allowed: an element above 1 breaks the tolerance
        self.worst: tuple[float, float, float] | None = None

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Count the elements of one batch that break the tolerance; keep the worst."""
        if reference.dtype.kind in "OSU":
            return  # string outputs: no numeric tolerance
        ref = np.asarray(reference, dtype=np.float64).reshape(-1)
        cand = np.asarray(candidate, dtype=np.float64).reshape(-1)
        self.elements += ref.size
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(cand - ref)
        same = (ref == cand) | (np.isnan(ref) & np.isnan(cand))
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        with np.errstate(over="ignore"):
            allowed = self.atol + self.rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0))
        broken = diff > allowed
        count = int(broken.sum())
        if not count:
            return
        self.violations += count
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(broken, diff / allowed, 0.0)  # x / 0 is inf: broken where nothing is allowed
        i = int(np.argmax(score))
        if self.worst is None or score[i] > self.worst_score:
            self.worst_score = float(score[i])
            self.worst = (float(diff[i]), float(ref[i]), float(allowed[i]))

    def result(self) -> ToleranceResult:
        if self.worst is None:
            return ToleranceResult(self.elements, self.violations)
        return ToleranceResult(self.elements, self.violations, *self.worst)


@dataclass(frozen=True)
class CheckFailure:
    """One output missing one threshold: ``check`` names it as the API does (``atol``, ``rtol``, ``atol+rtol``,
    ``min_snr``, ``min_top1``); ``measured`` is compared with ``threshold`` (for ``atol+rtol``: the worst
    element's difference with what was allowed there); ``message`` says it in words, naming the CLI flags."""

    output: str
    check: str
    measured: float
    threshold: float
    message: str


def check_outputs(
    outputs: Sequence[OutputAgreement],
    tolerances: Sequence[ToleranceResult | None],
    thresholds: Thresholds,
) -> list[CheckFailure]:
    """Each threshold each output misses, in output order; raises when ``min_top1`` could check no output."""
    if thresholds.min_top1 is not None and all(o.top1_agreement is None for o in outputs):
        raise OnnxoptError(
            f"--min-top1 {thresholds.min_top1:g}: no output is classifier-shaped ([N, C] or [N, C, 1, ...]), so "
            "top-1 agreement is not defined; check with --atol/--rtol or --min-snr instead"
        )
    failures: list[CheckFailure] = []
    for output, tolerance in zip(outputs, tolerances, strict=True):
        if tolerance is not None and tolerance.violations:
            failures.append(_tolerance_failure(output.name, tolerance, thresholds))
        if thresholds.min_snr is not None and output.snr_db < thresholds.min_snr:
            failures.append(
                CheckFailure(
                    output.name,
                    "min_snr",
                    output.snr_db,
                    thresholds.min_snr,
                    f"SNR {output.snr_db:.2f} dB < --min-snr {thresholds.min_snr:g}",
                )
            )
        top1 = output.top1_agreement
        if thresholds.min_top1 is not None and top1 is not None and top1 < thresholds.min_top1:
            failures.append(
                CheckFailure(
                    output.name,
                    "min_top1",
                    top1,
                    thresholds.min_top1,
                    f"top-1 agreement {top1:.4f} < --min-top1 {thresholds.min_top1:g}",
                )
            )
    return failures


def _tolerance_failure(name: str, tolerance: ToleranceResult, thresholds: Thresholds) -> CheckFailure:
    """The failure of an output some of whose elements broke ``atol + rtol * |ref|``."""
    diff, ref, allowed = tolerance.worst_diff, tolerance.worst_reference, tolerance.worst_allowed
    where = f" ({tolerance.violations} of {tolerance.elements} elements)"
    if thresholds.rtol is None:  # atol alone: the worst element is the largest difference
        atol = float(thresholds.atol or 0.0)
        return CheckFailure(name, "atol", diff, atol, f"max abs diff {diff:.3g} > --atol {atol:g}{where}")
    if thresholds.atol is None:  # rtol alone: the worst element is the largest relative difference
        rel = diff / abs(ref) if ref != 0 else math.inf
        rtol = thresholds.rtol
        return CheckFailure(name, "rtol", rel, rtol, f"max rel diff {rel:.3g} > --rtol {rtol:g}{where}")
    return CheckFailure(
        name,
        "atol+rtol",
        diff,
        allowed,
        f"abs diff {diff:.3g} > --atol {thresholds.atol:g} + --rtol {thresholds.rtol:g} * |ref {ref:.3g}| = "
        f"{allowed:.3g}{where}",
    )
