"""Latency statistics: percentiles of one series, and ratios between series with a bootstrap interval.

Every series of one benchmark cell is measured in the same rounds (round ``r``
times every model once), so ratios are bootstrapped over *rounds*: a
resample keeps each round's samples together, and machine drift that hit a
round hits both sides of the ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples behind each confidence interval.
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one series, in milliseconds; throughput in items per second."""

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float

    @classmethod
    def of(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        """Statistics of ``seconds`` (one entry per run of ``batch`` items)."""
        if len(seconds) == 0:
            raise ValueError("no runs to summarize")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])  # linear interpolation: monotone in q
        mean = float(ms.mean())
        return cls(
            runs=len(ms),
            mean_ms=mean,
            std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
        )


@dataclass(frozen=True)
class Ratio:
    """``candidate / baseline`` of the median latency, with a 95 % bootstrap interval."""

    median: float
    low: float
    high: float


def median_ratio(baseline: Sequence[float], candidate: Sequence[float], *, seed: int = 0) -> Ratio:
    """Ratio of medians of two series measured round by round (same length), bootstrapped over rounds."""
    base = np.asarray(baseline, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if base.shape != cand.shape or base.size == 0:
        raise ValueError("ratio needs two non-empty series of the same length")
    point = float(np.median(cand) / np.median(base))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(BOOTSTRAP_RESAMPLES, 2_000_000 // base.size))  # bounded memory for long runs
    ratios = []
    for done in range(0, BOOTSTRAP_RESAMPLES, chunk):
        rounds = rng.integers(0, base.size, size=(min(chunk, BOOTSTRAP_RESAMPLES - done), base.size))
        ratios.append(np.median(cand[rounds], axis=1) / np.median(base[rounds], axis=1))
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5])
    return Ratio(point, float(low), float(high))
