"""Non-finite data (NaN, +-Inf) is refused before any work, or -- when asked -- its samples are left out.

One NaN pixel among hundreds of calibration images poisons an activation range or a GPTQ Hessian, and the
model written from it scores near chance while the run reports success. So every floating-point input of a
dataset read from files is scanned once when the dataset opens, batch by batch (``np.isfinite`` per array,
never more than one batch in memory), before any pass runs:

* by default a non-finite value is a :class:`~onnxopt.errors.DataError` naming the array, the first bad
  sample and how many samples hold one;
* with ``drop=True`` (``--drop-nonfinite``) those samples are left out: the dataset returned serves the
  others, re-batched, and its description says how many were dropped.

Random data is finite by construction and images decoded from JPEG/PNG/BMP are too (their preprocessing
options are checked to be finite), so only ``.npz``/``.npy`` data and ``.npy`` images are scanned.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from onnxopt.data.batching import Batch, Dataset, sample_ranges
from onnxopt.errors import DataError

#: Samples read per batch while scanning and while serving kept samples.
SCAN_BATCH = 64


def check_finite(dataset: Dataset, source: str, *, drop: bool = False) -> Dataset:
    """``dataset`` itself when every float input is finite; else an error, or with ``drop`` a dataset that
    serves only the finite samples. ``source`` names the data in messages (``--data eval.npz``)."""
    bad: list[np.ndarray] = []
    first: tuple[str, int, str] | None = None  # array, sample, "NaN"/"Inf"
    start = 0
    for batch in dataset.batches(SCAN_BATCH):
        n = batch.samples
        rows = np.zeros(n, dtype=bool)
        for name, array in batch.feeds.items():
            if array.dtype.kind not in "fc":
                continue
            finite = np.isfinite(array)
            if array.ndim == 0:  # a scalar input: its one value stands for every sample of the batch
                here = np.full(n, not finite)
            else:
                here = ~finite.reshape(array.shape[0], -1).all(axis=1)
            if first is None and here.any():
                row = int(np.argmax(here))
                value = array if array.ndim == 0 else array[row]
                first = (name, start + row, "NaN" if np.isnan(value).any() else "Inf")
            rows |= here
        bad.append(rows)
        start += n
    if first is None:
        return dataset
    mask = np.concatenate(bad)
    count, total = int(mask.sum()), int(mask.size)
    name, sample, kind = first
    if not drop:
        raise DataError(
            f"{source}: array '{name}' holds {kind} in sample {sample} ({count} of {total} samples are not "
            "finite); fix the data, or pass --drop-nonfinite to leave those samples out"
        )
    if count == total:
        raise DataError(f"{source}: every sample holds NaN or Inf (first: array '{name}', sample {sample})")
    return FiniteSamples(dataset, mask)


class FiniteSamples:
    """The samples of ``inner`` whose ``bad`` flag is off, re-batched (``--drop-nonfinite``)."""

    def __init__(self, inner: Dataset, bad: np.ndarray) -> None:
        self.inner = inner
        self.bad = bad
        self.dropped = int(bad.sum())
        self.num_samples = int(bad.size) - self.dropped
        self.has_labels = inner.has_labels
        self.description = f"{inner.description} ({self.dropped} of {bad.size} samples with NaN/Inf left out)"

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        total = sum(n for _, n in sample_ranges(self.num_samples, batch_size, limit, exact))
        held: list[Batch] = []
        emitted = 0
        for piece in self._kept():
            if not any(np.ndim(a) for a in piece.feeds.values()):  # no batch axis: one run is one sample
                yield piece
                emitted += 1
            while emitted < total and piece is not None and any(np.ndim(a) for a in piece.feeds.values()):
                if held and not _same_scalars(held[0], piece):
                    if exact:
                        raise DataError(
                            f"a scalar input changes value within a batch, but the model takes batches of exactly "
                            f"{batch_size} samples: give it one value (a scalar array) for every sample"
                        )
                    emitted += _count(held)
                    yield _concat(held)
                    held = []
                    continue
                need = min(batch_size, total - emitted) - _count(held)
                head, piece = _split(piece, need)
                held.append(head)
                if _count(held) == min(batch_size, total - emitted):
                    emitted += _count(held)
                    yield _concat(held)
                    held = []
            if emitted >= total:
                return
        if held:
            yield _concat(held)

    def _kept(self) -> Iterator[Batch]:
        """The inner batches without their bad samples."""
        start = 0
        for batch in self.inner.batches(SCAN_BATCH):
            n = batch.samples
            keep = ~self.bad[start : start + n]
            start += n
            if keep.all():
                yield batch
            elif keep.any():
                yield _take(batch, np.flatnonzero(keep))


def _count(batches: list[Batch]) -> int:
    return sum(b.samples for b in batches)


def _same_scalars(a: Batch, b: Batch) -> bool:
    """Whether two batches agree on their scalar (rank-0) inputs, so that they may share a batch."""
    return all(np.array_equal(v, b.feeds[k]) for k, v in a.feeds.items() if np.ndim(v) == 0)


def _take(batch: Batch, rows: np.ndarray) -> Batch:
    feeds = {k: v if np.ndim(v) == 0 else v[rows] for k, v in batch.feeds.items()}
    return Batch(feeds, None if batch.labels is None else batch.labels[rows])


def _split(batch: Batch, n: int) -> tuple[Batch, Batch | None]:
    """The first ``n`` samples of ``batch`` and the rest (None when nothing is left)."""
    if n >= batch.samples:
        return batch, None
    head = {k: v if np.ndim(v) == 0 else v[:n] for k, v in batch.feeds.items()}
    tail = {k: v if np.ndim(v) == 0 else v[n:] for k, v in batch.feeds.items()}
    labels = batch.labels
    return Batch(head, None if labels is None else labels[:n]), Batch(tail, None if labels is None else labels[n:])


def _concat(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    feeds = {k: v if np.ndim(v) == 0 else np.concatenate([b.feeds[k] for b in batches]) for k, v in first.feeds.items()}
    labels = None if first.labels is None else np.concatenate([b.labels for b in batches])  # type: ignore[misc]
    return Batch(feeds, labels)
