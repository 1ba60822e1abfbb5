"""Clipping ranges for activation quantization chosen from a sample of values (numpy only).

``minmax`` and ``percentile`` need no search (:class:`onnxopt.passes.quantize.activation_ranges.RangeCollector`);
the two here trade clipping error for resolution:

* :func:`mse_range` -- the range whose quantize-dequantize round trip has the
  least mean squared error on the sample (a grid of 100 shrink factors of the
  observed range);
* :func:`entropy_range` -- the range whose quantized histogram is closest to the
  observed one in KL divergence (the TensorRT calibrator's method, Migacz 2017):
  2048-bin histogram of the magnitudes, thresholds from 128 bins upward, each
  candidate's distribution merged into 128 levels and expanded back. Exact
  zeros are left out of the histogram: half of a Relu's output is zero, which
  quantizes exactly, and that spike would otherwise favour clipping hard.

Both keep zero inside the range (an exact zero point) and take the sample that
:class:`RangeCollector` kept (a uniform reservoir over every batch).
"""

from __future__ import annotations

import itertools

import numpy as np

LEVELS = {"uint8": (0, 255), "int8": (-127, 127), "int16": (-32767, 32767)}


def quantize_roundtrip(values: np.ndarray, low: float, high: float, kind: str) -> np.ndarray:
    """``values`` quantized to ``kind`` over [low, high] (asymmetric for uint8, symmetric otherwise) and back."""
    qmin, qmax = LEVELS[kind]
    low, high = min(low, 0.0), max(high, 0.0)
    if kind == "uint8":
        scale = (high - low) / (qmax - qmin) or 1.0
        zero = np.clip(np.round(-low / scale), qmin, qmax)
    else:
        scale = max(abs(low), abs(high)) / qmax or 1.0
        zero = 0.0
    q = np.clip(np.round(values / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def mse_range(values: np.ndarray, low: float, high: float, kind: str, steps: int = 100) -> tuple[float, float]:
    """The shrink of [low, high] with the least round-trip MSE on ``values``."""
    if values.size == 0 or not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return low, high
    values = values.astype(np.float64)
    best, best_error = (low, high), np.inf
    for factor in np.linspace(1.0, 0.05, steps):
        lo, hi = low * factor, high * factor
        error = float(np.mean((quantize_roundtrip(values, lo, hi, kind) - values) ** 2))
        if error < best_error:
            best, best_error = (lo, hi), error
    return best


def entropy_range(
    values: np.ndarray, low: float, high: float, kind: str, bins: int = 2048, levels: int = 128
) -> tuple[float, float]:
    """The threshold on |x| whose ``levels``-level quantization keeps the histogram closest in KL divergence.

    The range is [-t, t] for signed data and [0, t] for non-negative data (after a Relu)."""
    if values.size == 0 or not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return low, high
    peak = max(abs(low), abs(high))
    magnitudes = np.abs(values[values != 0])  # exact zeros (half of a Relu's output) are represented exactly
    if magnitudes.size == 0:
        return low, high
    hist, _ = np.histogram(magnitudes, bins=bins, range=(0.0, peak))
    hist = hist.astype(np.float64)
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1, 16):
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()  # what the threshold clips lands in its last bin
        kl = _kl_after_merging(reference, hist[:i], levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = peak * best_i / bins
    if low >= 0:
        return 0.0, min(threshold, high)
    return max(-threshold, low), min(threshold, high)


def _kl_after_merging(reference: np.ndarray, kept: np.ndarray, levels: int) -> float:
    """KL(P || Q): P is ``reference`` (the clipped mass folded into its last bin), Q is ``kept`` (the same bins
    without the clipped mass) merged into ``levels`` groups, each spread evenly over its non-empty bins."""
    n = reference.size
    edges = np.linspace(0, n, levels + 1).astype(np.int64)
    expanded = np.zeros(n, np.float64)
    for start, stop in itertools.pairwise(edges):
        chunk = kept[start:stop]
        nonzero = chunk > 0
        if nonzero.any():
            expanded[start:stop][nonzero] = chunk.sum() / nonzero.sum()
    p_total, q_total = reference.sum(), expanded.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    p, q = reference / p_total, expanded / q_total
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))  # Q = 0 where P > 0: a large KL
