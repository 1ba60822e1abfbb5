"""The accuracy budget (``max_drop``): how far a lossy pass may go before the original's quality drops too much.

One search for every pass that spends a budget: ``prune-channels`` looks for the
largest ratio whose pruned copy stays within it (:meth:`AccuracyBudget.largest`,
bisection over a continuous knob), ``quantize`` for the fewest layers to keep
float (:meth:`AccuracyBudget.fewest`, galloping then binary search over a count).
Both assume the drop grows monotonically with the knob -- true enough for channel
ratios and float fallbacks, and what makes a handful of trials suffice. The drop
is measured by the run's :class:`~onnxopt.optimizer.quality.QualityProbe`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxopt.evaluate.readings import pooled_agreement
from onnxopt.optimizer.quality import QualityProbe


class AccuracyBudget:
    """``max_drop`` of the probe's metric, and the searches that spend it."""

    def __init__(self, probe: QualityProbe, max_drop: float) -> None:
        if not max_drop >= 0:
            raise ValueError(f"max_drop must be >= 0, not {max_drop}")
        self.probe = probe
        self.max_drop = max_drop

    @property
    def metric(self) -> str:
        return self.probe.metric

    @property
    def baseline(self) -> float:
        return self.probe.baseline

    def drop(self, candidate: ir.Model) -> float:
        """How much worse ``candidate`` scores than the original."""
        return self.probe.drop(candidate)

    def describe(self, drop: float) -> str:
        """A drop this budget measured, as a note says it."""
        return f"{drop:.4f}"

    def largest(self, drop_at: Callable[[float], float], high: float, steps: int) -> float | None:
        """The largest knob in ``(0, high]`` whose drop stays within the budget: ``high`` itself if it does,
        else bisection in ``steps - 1`` more trials; None when no trial did."""
        if drop_at(high) <= self.max_drop:
            return high
        low, best = 0.0, None
        for _ in range(steps - 1):
            mid = (low + high) / 2
            if drop_at(mid) <= self.max_drop:
                low, best = mid, mid
            else:
                high = mid
        return best

    def fewest(self, drop_with: Callable[[int], float], n: int) -> int | None:
        """The fewest ``k`` in ``0..n`` (0 = nothing given up) with ``drop_with(k)`` within the budget: doubling
        ``k`` until it holds, then binary search; None when even ``k = n`` (or ``n - 1``) misses it."""
        if drop_with(0) <= self.max_drop:
            return 0
        k = 1
        while k < n and drop_with(k) > self.max_drop:
            k *= 2
        k = min(k, n)
        if not n or drop_with(k) > self.max_drop or (k == n and drop_with(k - 1) > self.max_drop):
            return None
        low, high = k // 2 + 1, k  # drop_with(k // 2) was over budget, drop_with(k) is within
        while low < high:
            mid = (low + high) // 2
            if drop_with(mid) <= self.max_drop:
                high = mid
            else:
                low = mid + 1
        return high


class SnrBudget(AccuracyBudget):
    """``max_db_loss``: how many dB of output SNR (worst output, against the original) a candidate may lose
    beyond a *reference* candidate -- for quantization, the model with only its weights rounded to int8, the
    error no activation scheme can undo. The drop is ``max over outputs of (reference dB - candidate dB)``,
    never below 0; the searches are :class:`AccuracyBudget`'s."""

    def __init__(self, probe: QualityProbe, reference: ir.Model, max_db_loss: float) -> None:
        super().__init__(probe, max_db_loss)
        self.reference = probe.output_snr(reference)

    @property
    def metric(self) -> str:
        return "dB of output SNR lost beyond weights-only int8"

    @property
    def baseline(self) -> float:
        return 0.0

    def drop(self, candidate: ir.Model) -> float:
        got = self.probe.output_snr(candidate)
        return max(0.0, *(self.reference[name] - got[name] for name in self.reference))


class ReadingBudget(AccuracyBudget):
    """``max_reading_drop``: how much of the task reading (accuracy, top-1, whole-sequence or detection agreement
    with the original) a candidate may lose beyond a *reference* candidate -- for quantization, the weights-only
    int8 model, as :class:`SnrBudget`. Meant for probes that read a task (:attr:`QualityProbe.reads_task`).

    The drop judged is not the probe's point estimate but its one-sided upper bound at ``confidence``
    (:func:`drop_upper_bound`): a search for the fewest float layers that just meet a point estimate favours the
    candidate a lucky draw of samples flatters (on 256 strings one string is 0.004). Many readings (a detector's
    anchors) make the bound tight; few (256 strings) make it cautious. ``confidence`` 0.5 is about the point."""

    def __init__(self, probe: QualityProbe, reference: ir.Model, max_drop: float, confidence: float = 0.95) -> None:
        super().__init__(probe, max_drop)
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), not {confidence}")
        self.confidence = confidence
        self.reference_rows = probe.sample_rows(reference)
        self.reference = pooled_agreement(self.reference_rows.sum(axis=0))
        self.point = 0.0  # the last candidate's point estimate of the drop (the bound is what drop returns)

    @property
    def metric(self) -> str:
        return f"{self.probe.metric} lost beyond weights-only int8"

    @property
    def baseline(self) -> float:
        return self.reference

    def describe(self, drop: float) -> str:
        return f"at most {drop:.4f} at {self.confidence:.0%} confidence"

    def drop(self, candidate: ir.Model) -> float:
        rows = self.probe.sample_rows(candidate)
        self.point = max(0.0, self.reference - pooled_agreement(rows.sum(axis=0)))
        return max(0.0, drop_upper_bound(self.reference_rows, rows, self.confidence))


#: resamples of :func:`drop_upper_bound`'s bootstrap, and its seed (a fixed one: same rows, same bound)
RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def drop_upper_bound(reference: np.ndarray, candidate: np.ndarray, confidence: float) -> float:
    """The ``confidence`` one-sided upper bound of how much less ``candidate``'s reading agrees than
    ``reference``'s, both :meth:`QualityProbe.sample_rows` of the same samples: a paired percentile bootstrap
    (the same resampled samples score both, so what they share cancels), deterministic for given rows."""
    samples = len(reference)
    if samples != len(candidate):
        raise ValueError(f"{samples} reference rows against {len(candidate)} candidate rows")
    if not samples:
        return 0.0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    chunk = max(1, min(RESAMPLES, 4_000_000 // samples))  # resamples drawn at once: memory stays under 32 MB
    drops = []
    for done in range(0, RESAMPLES, chunk):
        counts = rng.multinomial(samples, np.full(samples, 1.0 / samples), size=min(chunk, RESAMPLES - done))
        counts = counts.astype(np.float64)
        drops.append(pooled_agreement(counts @ reference) - pooled_agreement(counts @ candidate))
    return float(np.quantile(np.concatenate(drops), confidence))
