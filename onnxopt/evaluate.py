"""Evaluator: how closely a candidate model agrees with a reference.

Per output, streamed over batches (memory does not grow with the data):
max and mean absolute error, error relative to the reference's magnitude,
cosine similarity, SNR in dB, and top-1 agreement for classifier-shaped
outputs (``[N, C]``, or ``[N, C, 1, ...]`` as convolutional classifiers emit);
accuracy of both models when the data carries labels.
The pipeline's guard uses the same accumulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxopt.data import Dataset, batch_size_for, fixed_batch
from onnxopt.errors import UnsupportedModelError
from onnxopt.runtime import Runner

if TYPE_CHECKING:
    from onnxopt.layer_error import LayerReport


@dataclass(frozen=True)
class OutputAgreement:
    """Agreement of one output over all compared samples."""

    name: str
    max_abs: float
    mean_abs: float
    max_rel: float  # max_abs / max |reference|
    cosine: float
    snr_db: float  # inf when the outputs are identical
    top1_agreement: float | None  # only for classifier-shaped outputs


@dataclass(frozen=True)
class Comparison:
    """Everything :func:`compare` measured."""

    samples: int
    outputs: list[OutputAgreement]
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    layers: LayerReport | None = None  # per-layer error, when asked for

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class AgreementAccumulator:
    """Streaming statistics of ``candidate - reference`` for one output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.rows = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.max_ref = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.cand_sq = 0.0
        self.err_sq = 0.0
        self.top1_same = 0
        self.classifier = True

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.dtype.kind in "OSU":
            return  # string outputs are compared for equality only
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"output '{self.name}': shapes differ, {ref.shape} vs {cand.shape}")
        diff = np.abs(cand - ref)
        finite = np.isfinite(ref) & np.isfinite(cand)
        # Identical non-finite values agree; a non-finite value on one side only is an infinite error.
        diff = np.where(finite, diff, np.where((ref == cand) | (np.isnan(ref) & np.isnan(cand)), 0.0, np.inf))
        ref_f, cand_f = np.where(finite, ref, 0.0), np.where(finite, cand, 0.0)
        self.count += ref.size
        if ref.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_ref = max(self.max_ref, float(np.abs(ref_f).max()))
        self.sum_abs += float(diff.sum())
        self.dot += float((ref_f * cand_f).sum())
        self.ref_sq += float((ref_f * ref_f).sum())
        self.cand_sq += float((cand_f * cand_f).sum())
        self.err_sq += float(np.square(np.where(np.isfinite(diff), diff, 0.0)).sum())
        self.classifier = self.classifier and is_classifier_shape(ref.shape)
        if self.classifier:
            self.top1_same += int((ref.reshape(ref.shape[:2]).argmax(1) == cand.reshape(ref.shape[:2]).argmax(1)).sum())
            self.rows += ref.shape[0]

    def result(self) -> OutputAgreement:
        denom = math.sqrt(self.ref_sq * self.cand_sq)
        cosine = self.dot / denom if denom > 0 else (1.0 if self.err_sq == 0 else 0.0)
        snr = math.inf if self.err_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-300) / self.err_sq)
        scale = self.max_ref if self.max_ref > 0 else 1.0
        return OutputAgreement(
            name=self.name,
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / self.count if self.count else 0.0,
            max_rel=self.max_abs / scale,
            cosine=cosine,
            snr_db=snr,
            top1_agreement=self.top1_same / self.rows if self.classifier and self.rows else None,
        )


class AccuracyCounter:
    """Top-1 accuracy of one classifier-shaped output against labels."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def add(self, output: np.ndarray, labels: np.ndarray) -> None:
        scores = output.reshape(output.shape[0], -1)
        self.correct += int((scores.argmax(axis=1) == labels.reshape(-1)).sum())
        self.total += labels.shape[0]

    def result(self) -> float | None:
        return self.correct / self.total if self.total else None


def is_classifier_shape(shape: tuple[int | str | None, ...]) -> bool:
    """``[N, C]`` with C > 1 (or symbolic), or the same with trailing 1s (``[N, C, 1, 1]``)."""
    return len(shape) >= 2 and shape[1] != 1 and all(d == 1 for d in shape[2:])


def classifier_output_index(runner: Runner) -> int | None:
    """Index of the first classifier-shaped output, if any."""
    for i, spec in enumerate(runner.outputs):
        if spec.shape is not None and is_classifier_shape(spec.shape):
            return i
    return None


def compare(
    reference: Runner,
    candidate: Runner,
    dataset: Dataset,
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Comparison:
    """Run both models on ``dataset`` and measure their agreement (and accuracy, with labels)."""
    names = reference.output_names
    missing = [n for n in names if n not in candidate.output_names]
    if missing:
        raise UnsupportedModelError(f"the candidate lacks output(s) {missing} of the reference")
    fixed = fixed_batch(reference.inputs)
    batch = fixed or batch_size or batch_size_for(reference.inputs)
    accumulators = [AgreementAccumulator(n) for n in names]
    cls_index = classifier_output_index(reference)
    ref_acc, cand_acc = AccuracyCounter(), AccuracyCounter()
    samples = 0
    for item in dataset.batches(batch, limit, exact=fixed is not None):
        ref_out = reference.run(item.feeds)
        cand_out = candidate.run(item.feeds, names)
        try:
            for acc, r, c in zip(accumulators, ref_out, cand_out, strict=True):
                acc.add(r, c)
        except ValueError as e:
            raise UnsupportedModelError(f"the models are not comparable: {e}") from e
        if item.labels is not None and cls_index is not None:
            ref_acc.add(ref_out[cls_index], item.labels)
            cand_acc.add(cand_out[cls_index], item.labels)
        n = next(iter(item.feeds.values())).shape[0] if item.feeds else 0
        samples += n
        if on_batch:
            on_batch(n)
    return Comparison(samples, [a.result() for a in accumulators], ref_acc.result(), cand_acc.result())


def agreement(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]], names: Sequence[str]
) -> list[OutputAgreement]:
    """Agreement of outputs already computed, batch by batch (used by the pipeline guard)."""
    accumulators = [AgreementAccumulator(n) for n in names]
    for ref_batch, cand_batch in zip(reference, candidate, strict=True):
        for acc, r, c in zip(accumulators, ref_batch, cand_batch, strict=True):
            acc.add(r, c)
    return [a.result() for a in accumulators]
