"""The distillation loss of a detector's anchor output, weighted the way detections are read.

A detector's raw output (``[N, A, K]`` with ``x, y, w, h, obj, classes``, or class-score heads) is mostly
background: on the suite's glyph detector 3,549 anchors per image, a few dozen of them glyphs, and objectness
averaging 0.008. A mean squared error over the whole tensor, divided by its mean square, is then almost all
the box offsets of background anchors; the scores that decide which boxes exist weigh next to nothing. So
distillation and quantization-aware fine-tuning spent their steps on boxes nobody reads: on the glyph detector
QAT moved its held-back detection agreement from 0.9730 to 0.9734 while all-int8 compute lost 0.03 of it.

:func:`detection_loss` instead, per output read as detections (:class:`~onnxopt.evaluate.readings.OutputReading`):

* **scores** -- each probability column (objectness, classes) is a Bernoulli: the KL divergence from the
  teacher's probability to the student's (both clipped to [0.001, 0.999]: below that nothing is a detection),
  the class columns weighted by the teacher's objectness where the head has one (YOLO's class scores of
  background anchors mean nothing: unweighted they were 95 % of the glyph detector's loss), summed over
  anchors and columns and divided by one plus the sum of
  the teacher's squared detection scores (``obj × best class``, or the best class score: about the batch's
  number of objects). Background anchors where both say 0 add nothing; a student that fires where the
  teacher does not pays ``-log(1 - p)``;
* **boxes** -- the other columns: the squared error weighted by the teacher's squared detection score of the
  anchor (squared: the glyph detector's 3,549 anchors at 0.005 would otherwise outweigh its objects at 0.9),
  divided by the same weighted square of the teacher's values: a relative error, whatever the boxes' units;

added.
"""

from __future__ import annotations

from onnxopt.evaluate.readings import OutputReading

#: probabilities are clipped to [FLOOR, 1 - FLOOR]: below 0.1 % nothing is a detection, and an int8 output cannot
#: tell 0.0002 from 0 (the glyph detector's background objectness against its all-int8 model's 0.016 steps)
FLOOR = 1e-3


def detection_loss(tf, student, target, reading: OutputReading):
    """The loss of ``student``'s output against the teacher's ``target`` (same shape), read as ``reading`` says."""
    target = tf.convert_to_tensor(target, student.dtype)
    if reading.anchor_axis == 2:  # [N, K, A] -> [N, A, K]
        student, target = tf.transpose(student, [0, 2, 1]), tf.transpose(target, [0, 2, 1])
    width = int(student.shape[-1])
    columns = list(reading.score_columns)
    p = tf.clip_by_value(tf.gather(student, columns, axis=-1), FLOOR, 1 - FLOOR)
    q = tf.clip_by_value(tf.gather(target, columns, axis=-1), FLOOR, 1 - FLOOR)
    kl = q * (tf.math.log(q) - tf.math.log(p)) + (1 - q) * (tf.math.log(1 - q) - tf.math.log(1 - p))
    if reading.objectness:  # a class score means something only where there is an object
        kl = tf.concat([kl[..., :1], kl[..., 1:] * q[..., :1]], axis=-1)
    score = q[..., 0] * tf.reduce_max(q[..., 1:], axis=-1) if reading.objectness else tf.reduce_max(q, axis=-1)
    weight = score**2  # squared: thousands of anchors at 0.005 must not outweigh a few objects at 0.9
    objects = tf.reduce_sum(weight) + 1.0
    loss = tf.reduce_sum(kl) / objects
    boxes = [c for c in range(width) if c not in set(columns)]
    if boxes:
        b_student, b_target = tf.gather(student, boxes, axis=-1), tf.gather(target, boxes, axis=-1)
        error = tf.reduce_sum(weight * tf.reduce_sum((b_student - b_target) ** 2, axis=-1))
        size = tf.reduce_sum(weight * tf.reduce_sum(b_target**2, axis=-1))
        loss += error / (size + 1e-12)
    return loss
