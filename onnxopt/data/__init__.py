"""Datasets: model inputs (and optional labels) streamed in batches.

Sources (:func:`open_dataset` picks one from the ``--data`` argument):

* ``.npz`` (:mod:`.npz`) -- one array per model input, keyed by input name,
  samples on axis 0, plus an optional ``labels`` array (class ids, or one-hot
  rows); streamed row-block by row-block straight out of the archive.
* ``.npy`` (:mod:`.npy`) -- one array, samples on axis 0, for a one-input model.
* a folder of images (:mod:`.images`) -- JPEG/PNG/BMP or ``.npy`` images,
  labels from class sub-folders, preprocessed by :class:`ImageOptions`.
* ``random[:N]`` (:mod:`.random_data`) -- N seeded samples shaped from the
  model's inputs. Only good for speed and agreement, never for accuracy.

A scalar (rank-0) model input has no batch axis: in ``.npz``/``.npy`` data it is
either a scalar array (one value for every sample) or an ``[N]`` array (one value
per sample; samples share a batch only while that value stays the same, since one
run of the model takes one value). The batch size comes from an input that has a
batch axis; a model whose inputs are all scalars runs one sample at a time.

Data read from files is scanned for NaN and Inf once, when it opens (:mod:`.finite`):
refused with the array and the first bad sample named, or with ``drop_nonfinite``
those samples are left out and the description says how many.

No source holds more than one batch in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from onnxopt.data.batching import (
    DEFAULT_BATCH,
    LABELS_KEY,
    Batch,
    Dataset,
    batch_size_for,
    feed_samples,
    fixed_batch,
    sample_ranges,
)
from onnxopt.data.finite import FiniteSamples, check_finite
from onnxopt.data.images import ImageFolderDataset, ImageOptions
from onnxopt.data.input_shapes import DEFAULT_IMAGE_SIZE, InputShapes, parse_input_shapes, sample_shapes
from onnxopt.data.npy import NpyDataset
from onnxopt.data.npz import NpzDataset
from onnxopt.data.random_data import DEFAULT_RANDOM_SAMPLES, RandomDataset, default_random
from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a command's data comes from: the ``--data`` source and, for an image folder, its preprocessing."""

    source: str
    images: ImageOptions | None = None
    drop_nonfinite: bool = False  # leave out samples holding NaN/Inf instead of refusing the data

    def open(self, inputs: Sequence[TensorSpec], *, seed: int = 0, shapes: InputShapes | None = None) -> Dataset:
        """The Dataset for a model with ``inputs`` (see :func:`open_dataset`)."""
        return open_dataset(
            self.source, inputs, seed=seed, images=self.images, shapes=shapes, drop_nonfinite=self.drop_nonfinite
        )


def open_dataset(
    spec: str,
    inputs: Sequence[TensorSpec],
    *,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    images: ImageOptions | None = None,
    shapes: InputShapes | None = None,
    drop_nonfinite: bool = False,
) -> Dataset:
    """Open ``spec`` (``.npz``, ``.npy``, an image folder, or ``random[:N]``) for a model with ``inputs``.

    Data from files is scanned for NaN/Inf first: refused, or with ``drop_nonfinite`` those samples are left
    out (:func:`~onnxopt.data.finite.check_finite`)."""
    path = Path(spec)
    if images is not None and images.given and not path.is_dir():
        raise DataError(f"--data {spec}: --size/--layout/--mean/--std/--scale/--channels apply to an image folder")
    if spec == "random" or spec.startswith("random:"):
        count = DEFAULT_RANDOM_SAMPLES
        if ":" in spec:
            try:
                count = int(spec.split(":", 1)[1])
            except ValueError:
                raise DataError(f"--data {spec}: expected random:N with N a positive integer") from None
        if count <= 0:
            raise DataError(f"--data {spec}: the number of samples must be positive")
        return RandomDataset(inputs, count, seed=seed, dims=dims, shapes=shapes)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder")
    dataset: Dataset
    if path.is_dir():
        dataset = ImageFolderDataset(path, inputs, images)
        if not dataset.holds_arrays:  # decoded 8-bit images under finite options are finite
            return dataset
    elif path.suffix == ".npz":
        dataset = NpzDataset(path, inputs)
    elif path.suffix == ".npy":
        dataset = NpyDataset(path, inputs)
    else:
        raise DataError(f"--data {spec}: expected a .npz or .npy file, an image folder, or random[:N]")
    return check_finite(dataset, f"--data {spec}", drop=drop_nonfinite)


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_RANDOM_SAMPLES",
    "LABELS_KEY",
    "Batch",
    "DataSpec",
    "Dataset",
    "FiniteSamples",
    "ImageFolderDataset",
    "ImageOptions",
    "InputShapes",
    "NpyDataset",
    "NpzDataset",
    "RandomDataset",
    "batch_size_for",
    "check_finite",
    "default_random",
    "feed_samples",
    "fixed_batch",
    "open_dataset",
    "parse_input_shapes",
    "sample_ranges",
    "sample_shapes",
]
