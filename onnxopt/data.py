"""Datasets: model inputs (and optional labels) streamed in batches.

Sources:

* ``.npz`` -- one array per model input, keyed by input name, samples on
  axis 0, plus an optional ``labels`` array (class ids, or one-hot rows).
  Arrays are streamed row-block by row-block straight out of the archive;
  nothing larger than one batch is held in memory.
* ``random[:N]`` -- N samples (default 8) shaped from the model's inputs;
  symbolic dimensions other than the batch axis are 1 unless given in
  ``dims``. Only good for speed and agreement, never for accuracy.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec

DEFAULT_BATCH = 32
DEFAULT_RANDOM_SAMPLES = 8
LABELS_KEY = "labels"


@dataclass
class Batch:
    """One batch: feeds keyed by input name, and labels when the data has them."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


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


def open_dataset(
    spec: str,
    inputs: Sequence[TensorSpec],
    *,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> Dataset:
    """Open ``spec`` (a ``.npz`` path or ``random[:N]``) for a model with ``inputs``."""
    if spec == "random" or spec.startswith("random:"):
        count = DEFAULT_RANDOM_SAMPLES
        if ":" in spec:
            try:
                count = int(spec.split(":", 1)[1])
            except ValueError:
                raise DataError(f"--data {spec}: expected random:N with N a positive integer") from None
        if count <= 0:
            raise DataError(f"--data {spec}: the number of samples must be positive")
        return RandomDataset(inputs, count, dims=dims or {}, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file")
    if path.suffix != ".npz":
        raise DataError(f"--data {spec}: expected a .npz file or random[:N]")
    return NpzDataset(path, inputs)


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


def default_random(inputs: Sequence[TensorSpec], seed: int = 0) -> RandomDataset:
    """Random data for runs given no data: 8 samples, or one whole fixed batch if larger."""
    return RandomDataset(inputs, max(DEFAULT_RANDOM_SAMPLES, fixed_batch(inputs) or 0), dims={}, seed=seed)


class RandomDataset:
    """Seeded random inputs shaped from the model's input specs."""

    has_labels = False

    def __init__(self, inputs: Sequence[TensorSpec], count: int, *, dims: Mapping[str, int], seed: int) -> None:
        self.inputs = list(inputs)
        self.num_samples = count
        self.dims = dict(dims)
        self.seed = seed
        self.description = f"random:{count} (seed {seed})"

    def _sample_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        if spec.shape is None:
            raise DataError(f"input '{spec.name}' has unknown rank: random data cannot be shaped, give --data")
        return tuple(self._dim(d) for d in spec.shape[1:])

    def _shape(self, spec: TensorSpec, n: int) -> tuple[int, ...]:
        """A batch of ``n`` samples; a scalar input (rank 0) has no batch axis and stays a scalar."""
        if spec.shape == ():
            return ()
        return (n, *self._sample_shape(spec))

    def _dim(self, dim: int | str | None) -> int:
        if isinstance(dim, int) and dim > 0:
            return dim
        if isinstance(dim, str) and dim in self.dims:
            return self.dims[dim]
        return 1

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for _, n in sample_ranges(self.num_samples, batch_size, limit, exact):
            yield Batch({spec.name: _random_array(rng, spec.dtype, self._shape(spec, n)) for spec in self.inputs})


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise DataError(f"random data cannot produce {dtype} inputs; give --data")


class NpzDataset:
    """Arrays of an ``.npz`` archive, checked against the model's inputs and streamed."""

    def __init__(self, path: Path, inputs: Sequence[TensorSpec]) -> None:
        self.path = path
        self.inputs = list(inputs)
        self.description = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"--data {path}: not a readable .npz archive ({e})") from e
        headers = {
            name[:-4]: _read_header(self._zip, name, path) for name in self._zip.namelist() if name.endswith(".npy")
        }
        counts = set()
        for spec in self.inputs:
            if spec.name not in headers:
                found = ", ".join(sorted(headers)) or "none"
                raise DataError(f"--data {path}: no array for model input '{spec.name}' (arrays found: {found})")
            shape, dtype = headers[spec.name]
            _check_array(spec, shape, dtype, path)
            counts.add(shape[0])
        self.has_labels = LABELS_KEY in headers
        if self.has_labels:
            counts.add(headers[LABELS_KEY][0][0])
        # Inputs whose leading dimensions differ cannot share a batch axis; arrays that are exactly
        # the model's static input shapes are then one feed (the backend-test layout).
        self.single_feed = (
            len(counts) > 1 and not self.has_labels and all(_fits(spec, headers[spec.name][0]) for spec in self.inputs)
        )
        if len(counts) != 1 and not self.single_feed:
            raise DataError(f"--data {path}: arrays disagree on the number of samples ({sorted(counts)})")
        self.num_samples = 1 if self.single_feed else counts.pop()
        if self.num_samples == 0:
            raise DataError(f"--data {path}: the arrays hold no samples")

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        if self.single_feed:
            yield Batch({spec.name: _NpyRows(self._zip, f"{spec.name}.npy").read_all() for spec in self.inputs})
            return
        ranges = sample_ranges(self.num_samples, batch_size, limit, exact)
        names = [spec.name for spec in self.inputs] + ([LABELS_KEY] if self.has_labels else [])
        streams = {name: _NpyRows(self._zip, f"{name}.npy") for name in names}
        try:
            for _, n in ranges:
                arrays = {name: stream.read(n) for name, stream in streams.items()}
                labels = arrays.pop(LABELS_KEY, None)
                if labels is not None and labels.ndim == 2:
                    labels = labels.argmax(axis=1)
                yield Batch(arrays, labels)
        finally:
            for stream in streams.values():
                stream.close()


def _check_array(spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> None:
    expected = _describe(spec)
    strings = spec.dtype.kind == "U" and dtype.kind in "US"
    if dtype != spec.dtype and not strings:
        raise DataError(f"--data {path}: input '{spec.name}' has dtype {dtype}, expected {spec.dtype} {expected}")
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise DataError(f"--data {path}: input '{spec.name}' has shape {list(shape)}, expected {expected}")
    for got, want in zip(shape[1:], spec.shape[1:], strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise DataError(f"--data {path}: input '{spec.name}' has shape {list(shape)}, expected {expected}")


def _fits(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is a complete feed for ``spec`` (symbolic dimensions match anything)."""
    if spec.shape is None or len(spec.shape) != len(shape):
        return False
    return all(
        not (isinstance(want, int) and want > 0) or want == got for want, got in zip(spec.shape, shape, strict=True)
    )


def _describe(spec: TensorSpec) -> str:
    dims = ["?" if d is None else str(d) for d in (spec.shape or ())]
    return f"[{', '.join(dims)}]" if spec.shape is not None else "(any shape)"


def _read_header(archive: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with archive.open(member) as f:
            shape, _, dtype = _parse_npy_header(f)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"--data {path}: array '{member[:-4]}' is unreadable ({e})") from e
    if not shape:
        raise DataError(f"--data {path}: array '{member[:-4]}' is a scalar, expected samples on axis 0")
    return shape, dtype


def _parse_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class _NpyRows:
    """Sequential reader of whole rows (axis-0 slices) of one ``.npy`` member."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self._file = archive.open(member)
        shape, fortran, self.dtype = _parse_npy_header(self._file)
        self.row_shape = shape[1:]
        self._rows = shape[0] if shape else 1
        self._full: np.ndarray | None = None
        self._offset = 0
        if fortran or self.dtype.hasobject:  # cannot stream: fall back to loading this one array
            self._file.close()
            self._full = np.load(archive.open(member), allow_pickle=False)
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, n: int) -> np.ndarray:
        if self._full is not None:
            rows = self._full[self._offset : self._offset + n]
            self._offset += n
            return np.ascontiguousarray(rows)
        raw = self._file.read(n * self._row_bytes)
        return np.frombuffer(raw, dtype=self.dtype).reshape((n, *self.row_shape)).copy()

    def read_all(self) -> np.ndarray:
        """The whole array (one model feed), then close."""
        rows = self._full.shape[0] if self._full is not None else self._rows
        try:
            return self.read(rows)
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()
