"""The reading budget judges an upper confidence bound of the drop (onnxopt/optimizer/budget.py); that it scores
samples calibration did not fit is tested with the quantize search (tests/test_quantize_search.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.optimizer.budget import drop_upper_bound


def _agreeing(n: int, wrong: int) -> np.ndarray:
    """``[agrees, 1]`` rows of ``n`` samples, the last ``wrong`` of them disagreeing."""
    agrees = np.ones(n)
    agrees[n - wrong :] = 0
    return np.stack([agrees, np.ones(n)], axis=1)


def test_the_bound_is_above_the_point_drop_and_tightens_with_more_samples() -> None:
    few = drop_upper_bound(_agreeing(256, 0), _agreeing(256, 3), 0.95)
    many = drop_upper_bound(_agreeing(2560, 0), _agreeing(2560, 30), 0.95)
    point = 3 / 256
    assert few > point and many > point  # the same point drop, 0.0117
    assert few - point > 2 * (many - point)  # ten times the samples: about a third of the margin
    assert drop_upper_bound(_agreeing(256, 0), _agreeing(256, 3), 0.5) == pytest.approx(point, abs=0.004)
    assert drop_upper_bound(_agreeing(256, 2), _agreeing(256, 2), 0.95) == 0.0  # the same samples wrong
    assert few == drop_upper_bound(_agreeing(256, 0), _agreeing(256, 3), 0.95)  # deterministic


def test_a_paired_bound_counts_only_the_samples_on_which_the_two_differ() -> None:
    # the candidate misses 4 strings the reference reads, and reads 4 it misses: no drop at all
    reference, candidate = _agreeing(256, 4), _agreeing(256, 0)
    candidate[:4, 0] = 0
    bound = drop_upper_bound(reference, candidate, 0.95)
    assert 0 < bound < drop_upper_bound(_agreeing(256, 0), _agreeing(256, 4), 0.95)


def test_a_detection_bound_resamples_images_not_boxes() -> None:
    # per image: matched, the reference's and the candidate's detections; the candidate loses one box in 10 images
    reference = np.tile([20.0, 20.0, 20.0], (100, 1))
    candidate = reference.copy()
    candidate[:10] = [19.0, 20.0, 19.0]
    point = 1 - 2 * (2000 - 10) / (2000 + 1990)
    assert drop_upper_bound(reference, candidate, 0.95) > point > 0
