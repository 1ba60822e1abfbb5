"""Streamed agreement statistics: the float32 path equals the float64 one; non-finite values are handled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxopt.evaluate.agreement import AgreementAccumulator


def _result(reference: np.ndarray, candidate: np.ndarray):
    accumulator = AgreementAccumulator("y")
    accumulator.add(reference, candidate)
    return accumulator.result()


def test_float32_outputs_give_the_float64_numbers() -> None:
    rng = np.random.default_rng(0)
    reference = (rng.standard_normal((4, 10, 7, 7)) * 50).astype(np.float32)
    candidate = (reference + rng.standard_normal(reference.shape).astype(np.float32) * 1e-3).astype(np.float32)
    fast = _result(reference, candidate)
    wide = _result(reference.astype(np.float64), candidate.astype(np.float64))
    for field in ("max_abs", "mean_abs", "max_rel", "cosine", "snr_db"):
        assert getattr(fast, field) == pytest.approx(getattr(wide, field), rel=1e-6), field
    assert 60 < fast.snr_db < 120 and fast.cosine < 1.0


def test_identical_non_finite_values_agree_and_one_sided_ones_are_infinite_errors() -> None:
    reference = np.array([[1.0, np.nan, np.inf, -2.0]], np.float32)
    same = _result(reference, reference.copy())
    assert same.max_abs == 0.0 and math.isinf(same.snr_db)
    broken = reference.copy()
    broken[0, 0] = np.inf
    worse = _result(reference, broken)
    assert math.isinf(worse.max_abs) and worse.max_rel == math.inf


def test_empty_outputs_and_shape_mismatch() -> None:
    empty = np.zeros((0, 3), np.float32)
    assert _result(empty, empty).max_abs == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        _result(np.zeros((1, 3), np.float32), np.zeros((1, 4), np.float32))


def test_top1_agreement_on_a_classifier_output() -> None:
    reference = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    candidate = np.array([[0.2, 0.7], [0.3, 0.6]], np.float32)
    assert _result(reference, candidate).top1_agreement == 0.5
