"""Activation ranges, streamed: what quantization calibrates from (numpy only; the data comes through the Context)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranges = dict[str, tuple[float, float]]  # tensor name -> calibrated (low, high)


class RangeCollector:
    """Streaming activation ranges per tensor: running min/max, and (for percentiles) a uniform sample.

    Memory does not grow with the number of batches: with ``sample_size`` set,
    each tensor keeps a uniform random sample of at most that many values of
    everything seen (reservoir sampling, Algorithm R, vectorized per batch).
    """

    def __init__(self, names: Sequence[str], *, sample_size: int = 0, seed: int = 0) -> None:
        self.low = dict.fromkeys(names, np.inf)
        self.high = dict.fromkeys(names, -np.inf)
        self.samples: dict[str, np.ndarray] = {}
        self.seen = dict.fromkeys(names, 0)
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, array: np.ndarray) -> None:
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        if not flat.size:
            return
        low, high = float(flat.min()), float(flat.max())
        if not (np.isfinite(low) and np.isfinite(high)):  # a NaN or an infinity somewhere: ranges of the rest
            flat = flat[np.isfinite(flat)]
            if not flat.size:
                return
            low, high = float(flat.min()), float(flat.max())
        self.low[name] = min(self.low[name], low)
        self.high[name] = max(self.high[name], high)
        if self.sample_size:
            self._reservoir(name, flat)
        self.seen[name] += flat.size

    def _reservoir(self, name: str, flat: np.ndarray) -> None:
        reservoir = self.samples.get(name, np.empty(0, np.float32))
        self.samples[name] = reservoir_update(reservoir, self.seen[name], flat, self.sample_size, self.rng)

    def range(self, name: str, percentile: float | None = None) -> tuple[float, float]:
        """(low, high): the observed extremes, or the ``percentile`` / ``100 - percentile`` quantiles."""
        if percentile is None or name not in self.samples:
            return self.low[name], self.high[name]
        values = self.samples[name]
        return float(np.percentile(values, 100 - percentile)), float(np.percentile(values, percentile))


def reservoir_update(
    kept: np.ndarray, seen: int, new: np.ndarray, capacity: int, rng: np.random.Generator
) -> np.ndarray:
    """A uniform sample of at most ``capacity`` items (along axis 0) of a stream: ``kept`` sampled from the
    ``seen`` items so far, updated with the ``new`` ones (Algorithm R, vectorized over the batch)."""
    room = capacity - len(kept)
    if room > 0:  # still filling: take items as they come
        kept = np.concatenate([kept, new[:room]])
        new, seen = new[room:], seen + min(room, len(new))
    if len(new):
        # Item number i (1-based over the stream) replaces a random slot with probability capacity / i.
        slots = (rng.random(len(new)) * (seen + 1 + np.arange(len(new)))).astype(np.int64)
        hit = slots < capacity
        kept[slots[hit]] = new[hit]  # later items win ties, as in the sequential algorithm
    return kept
