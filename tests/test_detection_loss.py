"""The detection loss weighs what decides detections (scores, and the boxes of anchors the teacher detects),
where a relative MSE over the whole output is mostly background boxes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the tf extra is not installed")

from onnxopt.convert.tf_import import tensorflow as tf_module
from onnxopt.distill.detection_loss import detection_loss
from onnxopt.distill.finetune import _mse
from onnxopt.evaluate.readings import read_outputs


def _teacher() -> np.ndarray:
    """[2, 400, 6] YOLOX-like raw output: box offsets and log sizes, objectness, one class; three objects."""
    g = np.random.default_rng(0)
    out = np.concatenate(
        [g.normal(0.5, 0.3, (2, 400, 4)), g.uniform(0, 0.01, (2, 400, 1)), g.uniform(0.2, 0.9, (2, 400, 1))], axis=2
    ).astype(np.float32)
    out[0, 10, 4], out[0, 200, 4], out[1, 50, 4] = 0.95, 0.9, 0.8
    return out


def test_a_false_detection_costs_more_than_background_boxes_moving() -> None:
    tf = tf_module()
    teacher = _teacher()
    reading = read_outputs(["output"], [teacher], 2).outputs[0]
    assert reading.kind == "detection" and reading.objectness and reading.score_columns == (4, 5)
    fires = teacher.copy()
    fires[1, 300, 4] = 0.9  # a detection the teacher does not make
    drift = teacher.copy()
    background = teacher[..., 4] < 0.5
    drift[..., :4][background] += 0.2  # every background anchor's box moves; no detection changes

    def both(student: np.ndarray) -> tuple[float, float]:
        value = tf.constant(student)
        return float(detection_loss(tf, value, teacher, reading)), float(_mse(tf, value, teacher))

    same, _ = both(teacher)
    fires_loss, fires_mse = both(fires)
    drift_loss, drift_mse = both(drift)
    assert abs(same) < 1e-5
    assert fires_mse < drift_mse  # the whole-tensor MSE ranks the harmless drift worse ...
    assert fires_loss > 10 * drift_loss  # ... the detection loss ranks the false detection far worse


def test_the_boxes_of_detected_anchors_count_and_their_units_do_not() -> None:
    tf = tf_module()
    teacher = _teacher()
    reading = read_outputs(["output"], [teacher], 2).outputs[0]
    moved = teacher.copy()
    moved[0, 10, :4] += 0.3  # the box of a detected glyph
    loss = float(detection_loss(tf, tf.constant(moved), teacher, reading))
    assert loss > 1e-3
    scaled, scaled_moved = teacher.copy(), moved.copy()
    scaled[..., :4] *= 100.0  # the same boxes in other units
    scaled_moved[..., :4] *= 100.0
    again = float(detection_loss(tf, tf.constant(scaled_moved), scaled, reading))
    assert again == pytest.approx(loss, rel=1e-3)
