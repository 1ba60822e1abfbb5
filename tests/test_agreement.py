"""Streamed agreement statistics: the float32 path equals the float64 one; non-finite values are handled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxopt.evaluate.agreement import SNR_CAP_DB, AgreementAccumulator, own_error_db


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


def test_own_error_is_the_error_power_a_layer_adds_not_a_difference_of_dbs() -> None:
    # the first layer after an exact input, 150 -> 36 dB, adds a 36 dB error; a later one, 30 -> 20 dB,
    # adds more (20.5 dB) though its dB difference (10) is far below the first's (114)
    assert own_error_db(SNR_CAP_DB, 36.0) == pytest.approx(36.0, abs=1e-6)
    assert own_error_db(30.0, 20.0) == pytest.approx(-10 * np.log10(1e-2 - 1e-3))
    assert own_error_db(30.0, 20.0) < own_error_db(SNR_CAP_DB, 36.0)
    assert own_error_db(20.0, 25.0) == SNR_CAP_DB  # a layer can shrink the error it receives: adds none
    assert own_error_db(float("inf"), float("inf")) == SNR_CAP_DB
