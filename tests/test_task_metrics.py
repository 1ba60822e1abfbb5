"""Task metrics of the real-model zoo (tools/task_metrics.py) on tiny cases with known answers."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from task_metrics import accuracy, box_iou, ctc_greedy_decode, detection_agreement, exact_string_agreement, snr_db


def test_accuracy_counts_argmax_hits():
    logits = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.1, 0.2], [1.0, 3.0, 2.0]])
    assert accuracy(logits, np.array([1, 0, 1, 1])) == 0.75
    with pytest.raises(ValueError):
        accuracy(logits, np.array([1, 0]))


def one_hot_path(indices: list[int], classes: int) -> np.ndarray:
    """Logits ``T×1×C`` (ddddocr's time-major layout) whose argmax path is ``indices``."""
    logits = np.zeros((len(indices), 1, classes), dtype=np.float32)
    logits[np.arange(len(indices)), 0, indices] = 1.0
    return logits


def test_ctc_greedy_decode_collapses_repeats_then_drops_blanks():
    charset = ["", "a", "b", "c"]
    # a a - a b b - - c c  → repeats merge only when adjacent, the blank separates the two a's
    assert ctc_greedy_decode(one_hot_path([1, 1, 0, 1, 2, 2, 0, 0, 3, 3], 4), charset) == ["aabc"]
    assert ctc_greedy_decode(one_hot_path([0, 0, 0], 4), charset) == [""]
    # batch-first layout and two sequences at once
    batch = np.concatenate([one_hot_path([2, 0, 2], 4), one_hot_path([3, 3, 1], 4)], axis=1)
    assert ctc_greedy_decode(batch, charset) == ["bb", "ca"]
    assert ctc_greedy_decode(batch.transpose(1, 0, 2), charset, layout="NTC") == ["bb", "ca"]
    # a different blank index
    assert ctc_greedy_decode(one_hot_path([1, 3, 3, 2], 4), ["x", "a", "b", "-"], blank=3) == ["ab"]


def test_exact_string_agreement_is_whole_string():
    assert exact_string_agreement(["ab12", "xyz", "q"], ["ab12", "xyz ", "Q"]) == pytest.approx(1 / 3)
    assert exact_string_agreement(["a"], ["a"]) == 1.0
    with pytest.raises(ValueError):
        exact_string_agreement(["a", "b"], ["a"])


def test_box_iou_of_known_overlap():
    a = np.array([[0, 0, 10, 10, 1, 0]], dtype=float)
    b = np.array([[5, 0, 15, 10, 1, 0], [20, 20, 30, 30, 1, 0]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0]])


def test_detection_agreement_shifted_wrong_class_and_extra_boxes():
    ref = np.array(
        [
            [0, 0, 10, 10, 0.9, 0],  # matched exactly
            [20, 0, 30, 10, 0.8, 0],  # candidate shifted by 5 px: IoU 1/3 < 0.5, unmatched
            [40, 0, 50, 10, 0.7, 1],  # candidate has the right place but class 2: unmatched
            [60, 0, 70, 10, 0.6, 0],  # candidate shifted by 1 px: IoU 9/11 ≥ 0.5, matched
        ],
        dtype=float,
    )
    cand = np.array(
        [
            [0, 0, 10, 10, 0.95, 0],
            [25, 0, 35, 10, 0.9, 0],
            [40, 0, 50, 10, 0.85, 2],
            [61, 0, 71, 10, 0.5, 0],
            [100, 100, 120, 120, 0.99, 0],  # extra box
        ],
        dtype=float,
    )
    recall, precision = detection_agreement(ref, cand, iou=0.5)
    assert recall == 2 / 4
    assert precision == 2 / 5
    # a looser threshold admits the shifted box; counts pool over images
    assert detection_agreement([ref, ref[:1]], [cand, cand[:1]], iou=0.3) == (4 / 5, 4 / 6)
    assert detection_agreement(ref, ref) == (1.0, 1.0)
    assert detection_agreement(np.zeros((0, 6)), np.zeros((0, 6))) == (1.0, 1.0)
    assert detection_agreement(ref, np.zeros((0, 6))) == (0.0, 1.0)


def test_detection_agreement_is_one_to_one():
    ref = np.array([[0, 0, 10, 10, 0.9, 0]], dtype=float)
    duplicates = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 11, 0.8, 0]], dtype=float)
    assert detection_agreement(ref, duplicates) == (1.0, 0.5)


def test_snr_db_of_known_noise():
    ref = np.array([3.0, -4.0, 0.0, 0.0])  # Σref² = 25
    cand = ref + np.array([0.5, 0.0, -0.0, 0.0])  # Σnoise² = 0.25 → 20 dB
    assert snr_db(ref, cand) == pytest.approx(20.0)
    assert snr_db(ref, ref) == math.inf
    rng = np.random.default_rng(0)
    signal = rng.normal(size=100_000)
    noisy = signal + rng.normal(scale=0.1, size=signal.shape)
    assert snr_db(signal, noisy) == pytest.approx(20.0, abs=0.2)
    with pytest.raises(ValueError):
        snr_db(ref, ref[:3])
