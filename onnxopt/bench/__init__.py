"""Benchmark: latency, throughput, session time and memory of ONNX models, interleaved, per provider and batch.

``benchmark([baseline, candidate, ...], BenchConfig(...))`` is what
``onnxopt bench`` runs; see :mod:`onnxopt.bench.run` for the method.
"""

from __future__ import annotations

from onnxopt.bench.run import BenchConfig, BenchResult, Measurement, benchmark, machine_description
from onnxopt.bench.stats import LatencyStats, Ratio, median_ratio

__all__ = [
    "BenchConfig",
    "BenchResult",
    "LatencyStats",
    "Measurement",
    "Ratio",
    "benchmark",
    "machine_description",
    "median_ratio",
]
