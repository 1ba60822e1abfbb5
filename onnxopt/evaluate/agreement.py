"""Agreement statistics, streamed: how closely one set of outputs follows another.

Per output, over batches (memory does not grow with the data): max and mean
absolute error, error relative to the reference's magnitude, cosine
similarity, SNR in dB, and top-1 agreement for classifier-shaped outputs
(``[N, C]``, or ``[N, C, 1, ...]`` as convolutional classifiers emit); top-1
accuracy against labels. A leaf: the pipeline's guard, :mod:`.compare` and
:mod:`.layers` all count with these accumulators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: SNRs are capped here before differences are taken: float32 rounding alone stays below it,
#: so an exact tensor (infinite SNR) and a merely rounded one count alike.
SNR_CAP_DB = 150.0


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
        # float32 stays float32 (sums accumulate in float64 all the same); anything else is compared in float64
        wide = not (reference.dtype == candidate.dtype == np.float32)
        ref = np.asarray(reference, dtype=np.float64) if wide else np.asarray(reference)
        cand = np.asarray(candidate, dtype=np.float64) if wide else np.asarray(candidate)
        if ref.shape != cand.shape:
            raise ValueError(f"output '{self.name}': shapes differ, {ref.shape} vs {cand.shape}")
        self.count += ref.size
        r, c = ref.reshape(-1), cand.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and overflow: the slow path below
            error = c - r
        diff = np.abs(error)
        peak = float(diff.max()) if ref.size else 0.0
        if math.isfinite(peak):  # every value finite on both sides (inf - x is inf, inf - inf is nan)
            self.max_abs = max(self.max_abs, peak)
            if ref.size:
                self.max_ref = max(self.max_ref, float(r.max()), -float(r.min()))
            self.sum_abs += float(diff.sum(dtype=np.float64))
            self.dot += _dot(r, c)
            self.ref_sq += _dot(r, r)
            self.cand_sq += _dot(c, c)
            self.err_sq += _dot(error, error)
        else:
            self._add_non_finite(ref.astype(np.float64), cand.astype(np.float64))
        self.classifier = self.classifier and is_classifier_shape(ref.shape)
        if self.classifier:
            self.top1_same += int((ref.reshape(ref.shape[:2]).argmax(1) == cand.reshape(ref.shape[:2]).argmax(1)).sum())
            self.rows += ref.shape[0]

    def _add_non_finite(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """The sums of :meth:`add` when some value is not finite: identical non-finite values agree, and a
        non-finite value on one side only is an infinite error."""
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(cand - ref)
        finite = np.isfinite(ref) & np.isfinite(cand)
        diff = np.where(finite, diff, np.where((ref == cand) | (np.isnan(ref) & np.isnan(cand)), 0.0, np.inf))
        ref_f, cand_f = np.where(finite, ref, 0.0), np.where(finite, cand, 0.0)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_ref = max(self.max_ref, float(np.abs(ref_f).max()))
        self.sum_abs += float(diff.sum())
        self.dot += float((ref_f * cand_f).sum())
        self.ref_sq += float((ref_f * ref_f).sum())
        self.cand_sq += float((cand_f * cand_f).sum())
        self.err_sq += float(np.square(np.where(np.isfinite(diff), diff, 0.0)).sum())

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


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` accumulated in float64, without a float64 copy of float32 operands."""
    return float(np.einsum("i,i->", a, b, dtype=np.float64))


def is_classifier_shape(shape: tuple[int | str | None, ...]) -> bool:
    """``[N, C]`` with C > 1 (or symbolic), or the same with trailing 1s (``[N, C, 1, 1]``)."""
    return len(shape) >= 2 and shape[1] != 1 and all(d == 1 for d in shape[2:])


def agreement(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]], names: Sequence[str]
) -> list[OutputAgreement]:
    """Agreement of outputs already computed, batch by batch (used by the pipeline guard)."""
    accumulators = [AgreementAccumulator(n) for n in names]
    for ref_batch, cand_batch in zip(reference, candidate, strict=True):
        for acc, r, c in zip(accumulators, ref_batch, cand_batch, strict=True):
            acc.add(r, c)
    return [a.result() for a in accumulators]


def own_error_db(upstream_db: float, downstream_db: float) -> float:
    """The SNR of the error one layer adds by itself: the error power relative to the signal at its output
    minus the power it received at its input (independent errors add as powers), in dB; lower adds more,
    :data:`SNR_CAP_DB` when it added none. A difference of the two dBs would charge the first layer after
    an exact input with the whole cap: one taking 150 dB to 36 dB adds a 36 dB error, and one taking
    30 dB to 20 dB a 20.5 dB error -- the larger of the two, though the dB difference says 114 against 10."""
    added = 10 ** (-finite_db(downstream_db) / 10) - 10 ** (-finite_db(upstream_db) / 10)
    return min(-10 * math.log10(max(added, 10 ** (-SNR_CAP_DB / 10))), SNR_CAP_DB)


def finite_db(db: float) -> float:
    """An identical tensor's infinite SNR, capped at :data:`SNR_CAP_DB` so differences stay numbers."""
    return min(db, SNR_CAP_DB) if not math.isnan(db) else -SNR_CAP_DB
