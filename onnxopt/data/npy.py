"""A single ``.npy`` file: samples on axis 0 for a model with one input, memory-mapped and read batch by batch.

A scalar (rank-0) input takes a scalar array (one sample) or an ``[N]`` array (one value per sample, one run each).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from onnxopt.data.batching import Batch, sample_ranges
from onnxopt.data.npz import check_array
from onnxopt.errors import DataError, one_line
from onnxopt.runtime import TensorSpec


class NpyDataset:
    """One array, one model input; no labels (use ``.npz`` or an image folder for labels)."""

    has_labels = False

    def __init__(self, path: Path, inputs: Sequence[TensorSpec]) -> None:
        if len(inputs) != 1:
            names = ", ".join(s.name for s in inputs)
            raise DataError(f"--data {path}: a .npy file feeds a one-input model; this one has {names} (use .npz)")
        self.spec = inputs[0]
        self.path = path
        self.description = str(path)
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"--data {path}: not a readable .npy file ({one_line(e, 200)})") from e
        scalar = self.spec.shape == ()  # no batch axis: one value for every sample ([]) or one per sample ([N])
        if self._array.ndim == 0 and not scalar:
            raise DataError(f"--data {path}: the array is a scalar, expected samples on axis 0")
        check_array(self.spec, self._array.shape, self._array.dtype, path)
        self.num_samples = int(self._array.shape[0]) if self._array.ndim else 1
        if self.num_samples == 0:
            raise DataError(f"--data {path}: the array holds no samples")

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        if self.spec.shape == ():  # a scalar input: one run of the model is one sample
            for start, _ in sample_ranges(self.num_samples, 1, limit, exact=False):
                yield Batch({self.spec.name: np.array(self._array[start] if self._array.ndim else self._array)})
            return
        for start, n in sample_ranges(self.num_samples, batch_size, limit, exact):
            yield Batch({self.spec.name: np.array(self._array[start : start + n])})
