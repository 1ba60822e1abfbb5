"""What every data source provides: batches of feeds (and labels), and the batch arithmetic they share."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec

DEFAULT_BATCH = 32
LABELS_KEY = "labels"


@dataclass
class Batch:
    """One batch: feeds keyed by input name, and labels when the data has them."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def samples(self) -> int:
        """How many samples the batch holds (see :func:`feed_samples`)."""
        return feed_samples(self.feeds)


def feed_samples(feeds: dict[str, np.ndarray]) -> int:
    """How many samples a feed holds: the leading dimension of its first input that has a batch axis; a scalar
    (rank-0) input has none, so a feed of scalars only is one sample (0 without inputs)."""
    for array in feeds.values():
        if np.ndim(array) > 0:
            return int(np.shape(array)[0])
    return 1 if feeds else 0


class Dataset(Protocol):
    """What every source provides."""

    description: str
    num_samples: int
    has_labels: bool

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        """Yield batches of at most ``batch_size`` samples, about ``limit`` samples in all.

        ``exact``: the model has a fixed batch dimension, so only whole batches
        of exactly ``batch_size`` are yielded (``limit`` is rounded up to one).
        """
        ...


def batch_size_for(inputs: Sequence[TensorSpec], requested: int = DEFAULT_BATCH) -> int:
    """The batch size a model accepts: its fixed batch dimension if it has one."""
    fixed = fixed_batch(inputs)
    return fixed if fixed is not None else requested


def fixed_batch(inputs: Sequence[TensorSpec]) -> int | None:
    """The model's fixed leading dimension, or None when it is dynamic."""
    for spec in inputs:
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            return spec.shape[0]
    return None


def sample_ranges(num_samples: int, batch_size: int, limit: int | None, exact: bool) -> list[tuple[int, int]]:
    """(start, count) of each batch to read."""
    total = min(num_samples, limit) if limit else num_samples
    if not exact:
        return [(start, min(batch_size, total - start)) for start in range(0, total, batch_size)]
    if num_samples < batch_size:
        raise DataError(f"the model takes batches of exactly {batch_size} samples; the data has {num_samples}")
    whole = max(total // batch_size, 1) if total >= batch_size else 1
    return [(i * batch_size, batch_size) for i in range(whole)]


def split_at_scalars(
    ranges: list[tuple[int, int]], per_sample: Mapping[str, np.ndarray], exact: bool
) -> list[tuple[int, int]]:
    """``ranges`` cut wherever a scalar input given per sample (``name -> [N]`` values) changes value.

    A rank-0 input has no batch axis: one run of the model takes one value of it, so only samples that agree
    on it can share a batch (all of them, when the values are equal). A model with a fixed batch size cannot
    take a batch cut short: there the values must not change within a batch.
    """
    if not per_sample:
        return ranges
    out = []
    for start, n in ranges:
        change = np.zeros(max(n - 1, 0), dtype=bool)
        for values in per_sample.values():
            part = values[start : start + n]
            change |= part[1:] != part[:-1]
        cuts = [start, *(start + 1 + np.flatnonzero(change)).tolist(), start + n]
        out.extend((a, b - a) for a, b in itertools.pairwise(cuts))
    if exact and len(out) != len(ranges):
        names = ", ".join(f"'{name}'" for name in per_sample)
        raise DataError(
            f"scalar input {names} is given per sample and changes value within a batch, but the model takes "
            f"batches of exactly {ranges[0][1]} samples: give it one value (a scalar array) for every sample"
        )
    return out
