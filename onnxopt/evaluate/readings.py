"""How a model's outputs are *read*: the agreement a user sees, not how close the raw numbers are.

Accuracy budgets (``max_drop`` of ``prune-channels``, ``quantize``, ``distill``, ``tune``) compare a candidate
with the original the way the output is used:

* ``top-1`` -- a classifier's ``[N, C]`` scores: the arg-max class per sample;
* ``sequence`` -- a CTC recognizer's ``[T, N, C]`` or ``[N, T, C]`` scores: each sample's greedy-decoded
  sequence (arg-max per step, repeats collapsed, the blank -- index 0, the convention of PaddleOCR, ddddocr
  and most CTC heads -- dropped). A sample agrees only when its whole sequence matches: per-step top-1
  hides a collapse (a pruned recognizer can agree on 90 % of the steps and read few words right);
* ``detection`` -- a detector's raw anchor outputs ``[N, A, K]`` (YOLOv5/YOLOX ``x, y, w, h, obj, classes``;
  class-score heads such as PicoDet's ``[N, A, C]``) or ``[N, K, A]`` (YOLOv8 ``x, y, w, h, classes``): the
  anchors whose score reaches :data:`DETECTION_THRESHOLD`, each with its class, matched by anchor and class;
  agreement is the F1 of the candidate's detections against the original's. The score columns are those
  whose values the original keeps in ``[0, 1]`` (probabilities); ``x, y, w, h, obj, classes`` scores
  ``obj × class``. Anchors are matched by identity, not box overlap (the box decoding is outside such
  graphs): a proxy for boxes matched after NMS, which it followed within 0.02 of F1 on the suite's two
  detectors (``tools/check_detection_reading.py``);
* ``values`` -- anything else: ``1 - ||y - y0|| / ||y0||`` (see :mod:`onnxopt.optimizer.quality`).

:func:`read_outputs` chooses from the outputs' shapes and values (and names, to break ties), or as asked
(``--metric``); :class:`ReadingCounter` counts agreement batch by batch. A leaf: numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from onnxopt.errors import DataError
from onnxopt.evaluate.agreement import is_classifier_shape

#: what ``--metric`` accepts: ``auto`` chooses from the outputs
METRICS = ("auto", "top1", "sequence", "detection", "values")
#: an anchor is a detection when its score reaches this (the common YOLO confidence default)
DETECTION_THRESHOLD = 0.25
#: the CTC blank class
CTC_BLANK = 0
#: fewest anchors an output needs to be read as a detector's (a sequence's steps are fewer)
MIN_ANCHORS = 100
_DETECTION_WORDS = ("box", "bbox", "det", "anchor", "score", "conf", "yolo")
_SEQUENCE_WORDS = ("ctc", "seq", "text", "rec", "char", "logit")


@dataclasses.dataclass(frozen=True)
class OutputReading:
    """How one output (by position among the model's outputs) is read."""

    index: int
    name: str
    kind: str  # "top-1", "sequence", "detection"
    batch_axis: int = 0
    anchor_axis: int = 1  # detection: the anchors' axis (1, or 2 for YOLOv8's [N, K, A])
    score_columns: tuple[int, ...] = ()  # detection: the probability columns along the other axis
    objectness: bool = False  # detection: the first score column multiplies the others (x, y, w, h, obj, cls)

    def describe(self) -> str:
        if self.kind == "sequence":
            layout = "T×N×C" if self.batch_axis == 1 else "N×T×C"
            return f"greedy CTC sequences of '{self.name}' ({layout}, blank {CTC_BLANK})"
        if self.kind == "detection":
            how = "obj × class" if self.objectness else "class score"
            return f"anchors of '{self.name}' with {how} >= {DETECTION_THRESHOLD:g}"
        return f"top-1 of '{self.name}'"


@dataclasses.dataclass(frozen=True)
class ModelReading:
    """The metric a budget spends: ``top-1 agreement``, ``sequence agreement``, ``detection agreement`` or
    ``output agreement`` (``outputs`` empty), and the outputs it reads."""

    metric: str
    outputs: tuple[OutputReading, ...] = ()

    def describe(self) -> str:
        if not self.outputs:
            return "output agreement (1 - relative error over every output)"
        return f"{self.metric}: " + "; ".join(o.describe() for o in self.outputs)


def read_outputs(names: Sequence[str], arrays: Sequence[np.ndarray], batch: int, metric: str = "auto") -> ModelReading:
    """How to read a model whose outputs ``names`` gave ``arrays`` on a batch of ``batch`` samples (the
    original's outputs: score columns are recognized from its values). ``metric`` forces a reading; a forced
    reading no output fits is a :class:`~onnxopt.errors.DataError` naming the outputs' shapes."""
    if metric not in METRICS:
        raise DataError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if metric == "values":
        return ModelReading("output agreement")
    found: dict[str, list[OutputReading]] = {"top-1": [], "sequence": [], "detection": []}
    for index, (name, array) in enumerate(zip(names, arrays, strict=True)):
        reading = _read_one(index, name, np.asarray(array), batch, metric)
        if reading is not None:
            found[reading.kind].append(reading)
    wanted = {"top1": "top-1", "sequence": "sequence", "detection": "detection"}.get(metric)
    order = [wanted] if wanted else ["top-1", "detection", "sequence"]  # a detector's other heads are not sequences
    for kind in order:
        if found[kind]:
            return ModelReading(f"{kind} agreement", tuple(found[kind]))
    if wanted:
        shapes = ", ".join(f"{n} {list(np.shape(a))}" for n, a in zip(names, arrays, strict=True))
        raise DataError(f"--metric {metric}: no output reads as {wanted} scores (outputs: {shapes})")
    return ModelReading("output agreement")


def _read_one(index: int, name: str, array: np.ndarray, batch: int, metric: str) -> OutputReading | None:
    if array.dtype.kind != "f" or array.ndim < 2:
        return None
    if array.shape[0] == batch and is_classifier_shape(array.shape):
        return OutputReading(index, name, "top-1")
    if array.ndim != 3:
        return None
    batch_axis = 0 if array.shape[0] == batch else 1 if array.shape[1] == batch else None
    if batch_axis is None:
        return None
    detection = _as_detection(index, name, array, metric) if batch_axis == 0 else None
    if detection is not None and metric != "sequence":
        return detection
    steps, classes = array.shape[1 - batch_axis], array.shape[2]
    if metric in ("auto", "sequence") and steps >= 2 and classes >= 2:
        return OutputReading(index, name, "sequence", batch_axis=batch_axis)
    return None


def _as_detection(index: int, name: str, array: np.ndarray, metric: str) -> OutputReading | None:
    """A detector's anchor output, or None: anchors on axis 1 (``[N, A, K]``) or 2 (``[N, K, A]``)."""
    lowered = name.lower()
    named = any(w in lowered for w in _DETECTION_WORDS) and not any(w in lowered for w in _SEQUENCE_WORDS)
    least = 2 if metric == "detection" else MIN_ANCHORS
    for anchor_axis in (1, 2):
        anchors, width = array.shape[anchor_axis], array.shape[3 - anchor_axis]
        if anchors < least or (width > max(anchors // 4, 1) and not (metric == "detection" or named)):
            continue
        columns = np.moveaxis(array, 3 - anchor_axis, -1).reshape(-1, width)
        probability = (columns.min(axis=0) >= 0.0) & (columns.max(axis=0) <= 1.0)
        scores = tuple(int(i) for i in np.flatnonzero(probability))
        if not scores:
            continue
        mixed = len(scores) < width
        if not mixed and metric != "detection":
            if anchor_axis == 2:
                continue  # [N, C, L] of probabilities only is more likely a sequence or a map than a detector
            if np.allclose(columns.sum(axis=1), 1.0, atol=1e-3):
                continue  # a softmax over the last axis: class scores per step (a sequence), not anchor scores
        objectness = anchor_axis == 1 and scores[0] == 4 and len(scores) >= 2 and scores == tuple(range(4, width))
        return OutputReading(index, name, "detection", 0, anchor_axis, scores, objectness)
    return None


def ctc_paths(scores: np.ndarray, batch_axis: int) -> list[tuple[int, ...]]:
    """Each sample's greedy CTC reading of ``scores`` (``[T, N, C]`` for ``batch_axis`` 1, ``[N, T, C]`` for 0):
    the arg-max class per step, repeats collapsed, then the blank dropped (so ``a, -, a`` reads ``a a`` and
    ``a, a`` reads ``a``)."""
    best = np.argmax(scores, axis=-1)
    if batch_axis == 1:
        best = best.T
    paths = []
    for row in best:
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        paths.append(tuple(int(c) for c in row[keep] if c != CTC_BLANK))
    return paths


def anchor_detections(array: np.ndarray, reading: OutputReading) -> list[set[tuple[int, int]]]:
    """Per sample, the ``(anchor, class)`` pairs whose score reaches :data:`DETECTION_THRESHOLD`."""
    values = np.asarray(array, dtype=np.float32)
    if reading.anchor_axis == 2:
        values = np.swapaxes(values, 1, 2)
    scores = values[:, :, list(reading.score_columns)]
    if reading.objectness:
        classes = scores[:, :, 1:]
        best = scores[:, :, 0] * classes.max(axis=2)
        label = classes.argmax(axis=2)
    else:
        best, label = scores.max(axis=2), scores.argmax(axis=2)
    found = []
    for sample_best, sample_label in zip(best, label, strict=True):
        anchors = np.flatnonzero(sample_best >= DETECTION_THRESHOLD)
        found.append({(int(a), int(sample_label[a])) for a in anchors})
    return found


class ReadingCounter:
    """Agreement of candidate outputs with reference outputs under a :class:`ModelReading`, batch by batch,
    kept per sample (:meth:`rows`) so a budget can ask how sure the agreement is, not only what it is."""

    def __init__(self, reading: ModelReading) -> None:
        self.reading = reading
        self._rows: list[np.ndarray] = []

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> None:
        kind = self.reading.metric
        if kind == "detection agreement":
            counts: np.ndarray | None = None  # per sample: matched, the reference's and the candidate's detections
            for out in self.reading.outputs:
                ref = anchor_detections(reference[out.index], out)
                cand = anchor_detections(candidate[out.index], out)
                got = np.array([(len(r & c), len(r), len(c)) for r, c in zip(ref, cand, strict=True)], np.float64)
                counts = got if counts is None else counts + got
            if counts is not None:
                self._rows.append(counts.reshape(-1, 3))
            return
        agree: np.ndarray | None = None
        for out in self.reading.outputs:
            ref, cand = np.asarray(reference[out.index]), np.asarray(candidate[out.index])
            if out.kind == "top-1":
                same = top1(ref) == top1(cand)
            else:
                same = np.array([a == b for a, b in zip(ctc_paths(ref, out.batch_axis), ctc_paths(cand, out.batch_axis),
                                                       strict=True)])  # fmt: skip
            agree = same if agree is None else agree & same
        if agree is not None:
            self._rows.append(np.stack([agree.reshape(-1), np.ones(agree.size, bool)], axis=1).astype(np.float64))

    def rows(self) -> np.ndarray:
        """Per sample, what :func:`pooled_agreement` adds up: ``[agrees, 1]`` (top-1, sequence) or ``[matched,
        reference detections, candidate detections]`` (detection); ``[samples, 2 or 3]``."""
        width = 3 if self.reading.metric == "detection agreement" else 2
        return np.concatenate(self._rows) if self._rows else np.zeros((0, width))

    def value(self) -> float:
        """The agreement, 1.0 for outputs identical to the reference's."""
        return pooled_agreement(self.rows().sum(axis=0))


def pooled_agreement(sums: np.ndarray) -> float | np.ndarray:
    """The agreement of :meth:`ReadingCounter.rows` summed over samples (``sums``, the last axis the columns;
    leading axes give one value each, as a bootstrap's resamples do): the fraction of samples that agree, or the
    F1 of the detections (``2 matched / (reference + candidate)``); 1.0 with nothing to compare."""
    sums = np.asarray(sums, np.float64)
    if sums.shape[-1] == 3:
        agreeing, total = 2 * sums[..., 0], sums[..., 1] + sums[..., 2]
    else:
        agreeing, total = sums[..., 0], sums[..., 1]
    result = np.where(total > 0, agreeing / np.maximum(total, 1e-300), 1.0)
    return float(result) if result.ndim == 0 else result


def top1(scores: np.ndarray) -> np.ndarray:
    """The arg-max class of each row of classifier scores (``[N, C]`` or ``[N, C, 1, ...]``)."""
    return scores.reshape(scores.shape[0], -1).argmax(axis=1)
