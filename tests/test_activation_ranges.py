"""Calibration statistics: exact extremes, and a bounded reservoir that samples the whole stream uniformly."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.quantize.activation_ranges import RangeCollector


def test_minmax_is_exact_and_keeps_no_sample() -> None:
    collector = RangeCollector(["t"])
    for low, high in ((-1.0, 2.0), (-3.0, 0.5), (0.0, 7.0)):
        collector.add("t", np.array([low, high, np.nan, np.inf], np.float32))
    assert collector.range("t") == (-3.0, 7.0)
    assert "t" not in collector.samples


def test_reservoir_is_bounded_and_uniform_over_batches() -> None:
    collector = RangeCollector(["t"], sample_size=20_000, seed=0)
    rng = np.random.default_rng(1)
    for i in range(50):  # the mean drifts from batch to batch: a biased sample would show it
        collector.add("t", rng.normal(i / 10, 1, 100_000))
    sample = collector.samples["t"]
    assert sample.size == 20_000
    assert abs(sample.mean() - np.arange(50).mean() / 10) < 0.05
    low, high = collector.range("t", 99.0)
    assert low < 0 < 4.5 < high < collector.high["t"]
