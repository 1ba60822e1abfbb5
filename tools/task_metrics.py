"""Task metrics for the real-model zoo, on raw output arrays (numpy only, so the tests need nothing else).

Each metric compares what a model variant *does* with what the fp32 original does (or with the
ground truth), rather than how close the raw numbers are:

* :func:`accuracy` -- top-1 of classifier logits against labels;
* :func:`ctc_greedy_decode` + :func:`exact_string_agreement` -- the text an OCR model reads;
* :func:`detection_agreement` -- which decoded boxes a candidate detector keeps, matched to the
  reference detector's boxes;
* :func:`snr_db` -- the raw-output signal-to-noise ratio, for the record;
* :func:`describe` -- a row's task metrics in words, for the generated tables.

Boxes everywhere are ``float`` arrays of shape ``(K, 6)``: ``[x1, y1, x2, y2, score, class]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``logits`` (``N × C``) whose argmax equals the integer label."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} disagree (expected N×C and N)")
    if labels.size == 0:
        raise ValueError("no samples")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def ctc_greedy_decode(logits: np.ndarray, charset: Sequence[str], blank: int = 0, layout: str = "TNC") -> list[str]:
    """Best-path CTC decoding: argmax per time step, collapse repeats, drop ``blank``, map through ``charset``.

    This is ddddocr's convention (``ddddocr/core/ocr_engine.py``): repeats are collapsed at index
    level *before* blanks are dropped (so ``a - a`` reads ``aa`` and ``a a`` reads ``a``), and
    indices outside ``charset`` are skipped. ``logits`` is ``T×N×C`` (``layout="TNC"``, ddddocr's
    output), ``N×T×C`` (``"NTC"``) or ``T×C`` (one sequence). Returns one string per sequence.
    """
    logits = np.asarray(logits)
    if logits.ndim == 2:
        logits = logits[:, None, :]
        layout = "TNC"
    if logits.ndim != 3 or layout not in ("TNC", "NTC"):
        raise ValueError(f"expected T×C, T×N×C or N×T×C logits, got shape {logits.shape} with layout {layout}")
    indices = np.argmax(logits, axis=2)  # T×N or N×T
    if layout == "TNC":
        indices = indices.T
    texts = []
    for path in indices:
        keep = np.ones(path.shape, dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        chars = [charset[i] for i in path[keep] if i != blank and 0 <= i < len(charset)]
        texts.append("".join(chars))
    return texts


def exact_string_agreement(a_texts: Sequence[str], b_texts: Sequence[str]) -> float:
    """Fraction of positions where the two string lists hold exactly the same string."""
    if len(a_texts) != len(b_texts):
        raise ValueError(f"{len(a_texts)} and {len(b_texts)} strings")
    if not a_texts:
        raise ValueError("no strings")
    return float(np.mean([a == b for a, b in zip(a_texts, b_texts, strict=True)]))


def _corners(boxes: np.ndarray) -> np.ndarray:
    """The ``[x1, y1, x2, y2]`` columns of a box array as float64 ``K×4`` (``0×4`` when empty)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    return boxes.reshape(-1, boxes.shape[-1])[:, :4]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (``len(a) × len(b)``) of corner-form boxes (the first four columns are used)."""
    a, b = _corners(a), _corners(b)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(ref_boxes: np.ndarray, cand_boxes: np.ndarray, iou: float = 0.5) -> int:
    """Number of greedy one-to-one matches of candidate boxes to reference boxes of the same class.

    Candidates are taken highest score first; each takes the still-unmatched reference box of its
    class with the highest IoU, provided that IoU is at least ``iou``.
    """
    ref = np.asarray(ref_boxes, dtype=np.float64).reshape(-1, 6)
    cand = np.asarray(cand_boxes, dtype=np.float64).reshape(-1, 6)
    if len(ref) == 0 or len(cand) == 0:
        return 0
    overlaps = box_iou(cand, ref)
    overlaps[cand[:, 5][:, None] != ref[:, 5][None, :]] = -1.0
    taken = np.zeros(len(ref), dtype=bool)
    matched = 0
    for c in np.argsort(-cand[:, 4], kind="stable"):
        row = np.where(taken, -1.0, overlaps[c])
        best = int(np.argmax(row))
        if row[best] >= iou:
            taken[best] = True
            matched += 1
    return matched


def detection_agreement(
    ref_boxes: np.ndarray | Sequence[np.ndarray], cand_boxes: np.ndarray | Sequence[np.ndarray], iou: float = 0.5
) -> tuple[float, float]:
    """``(recall, precision)`` of a candidate detector's boxes against the reference detector's boxes.

    recall = matched reference boxes / reference boxes, precision = matched candidate boxes /
    candidate boxes, with the greedy same-class matching of :func:`match_boxes`. Either argument may
    be one image's ``(K, 6)`` array or a list of them (one per image, counts pooled over images).
    With no reference boxes recall is 1 (nothing was missed); with no candidate boxes precision is 1.
    """
    refs = [ref_boxes] if isinstance(ref_boxes, np.ndarray) else list(ref_boxes)
    cands = [cand_boxes] if isinstance(cand_boxes, np.ndarray) else list(cand_boxes)
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} reference images and {len(cands)} candidate images")
    matched = sum(match_boxes(r, c, iou) for r, c in zip(refs, cands, strict=True))
    n_ref = sum(len(np.asarray(r).reshape(-1, 6)) for r in refs)
    n_cand = sum(len(np.asarray(c).reshape(-1, 6)) for c in cands)
    recall = matched / n_ref if n_ref else 1.0
    precision = matched / n_cand if n_cand else 1.0
    return float(recall), float(precision)


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-noise ratio ``10·log10(Σref² / Σ(ref − cand)²)`` in dB; ``inf`` when they are equal."""
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes {ref.shape} and {cand.shape} differ")
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def describe(task: dict[str, object] | None) -> str:
    """A variant's task metrics (``tools/real_tasks.evaluate_task``'s dict) in words for a table cell:
    decoded boxes' recall / precision, exact strings, or accuracy; "" when there are none."""
    if not task:
        return ""
    if "recall" in task:
        return f"recall {task['recall']:.3f} / precision {task['precision']:.3f}"
    if "exact_string_agreement" in task:
        return f"exact {task['exact_string_agreement']:.3f} (text {task['accuracy']:.3f})"
    if task.get("accuracy") is not None:
        return f"accuracy {task['accuracy']:.4f}"
    return ""
