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
    # per image: matched, the reference's and the candidate's detections; 10 of 2,000 boxes lost either way --
    # one in each of 10 images, or five in each of 2: the same point drop, less certain when the loss is lumped
    reference = np.tile([20.0, 20.0, 20.0], (100, 1))
    spread, lumped = reference.copy(), reference.copy()
    spread[:10] = [19.0, 20.0, 19.0]
    lumped[:2] = [15.0, 20.0, 15.0]
    point = 1 - 2 * (2000 - 10) / (2000 + 1990)
    assert drop_upper_bound(reference, lumped, 0.95) > drop_upper_bound(reference, spread, 0.95) > point > 0


def test_the_confidence_of_the_bound_is_a_probability() -> None:
    from onnxopt.passes.quantize.config import QuantizeConfig

    for wrong in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="reading_confidence must be in"):
            QuantizeConfig(max_reading_drop=0.01, reading_confidence=wrong)


def test_fine_tuning_never_sees_the_samples_the_budget_judges() -> None:
    from onnxopt.passes.qat import without_judged

    inputs, labels = without_judged({"x": np.arange(10)}, np.arange(10) * 10, (2, 5), 6)
    assert inputs["x"].tolist() == [0, 1, 5, 6, 7, 8] and labels.tolist() == [0, 10, 50, 60, 70, 80]
    inputs, labels = without_judged({"x": np.arange(10)}, None, (0, 0), 4)
    assert inputs["x"].tolist() == [0, 1, 2, 3] and labels is None
