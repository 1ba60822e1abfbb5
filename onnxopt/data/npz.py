"""``.npz`` archives: one array per model input plus optional labels, streamed row-block by row-block.

A scalar (rank-0) model input has no batch axis. Its array is either a scalar (one value for every sample) or
of shape ``[N]`` (one value per sample): samples then share a batch only while that value stays the same.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from onnxopt.data.batching import LABELS_KEY, Batch, sample_ranges, split_at_scalars
from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec


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
        # rank-0 inputs have no batch axis: a scalar array is one value for every sample, an [N] array one per sample
        self.scalars: dict[str, np.ndarray] = {}
        self.per_sample: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name not in headers:
                found = ", ".join(sorted(headers)) or "none"
                raise DataError(f"--data {path}: no array for model input '{spec.name}' (arrays found: {found})")
            shape, dtype = headers[spec.name]
            check_array(spec, shape, dtype, path)
            if spec.shape == ():
                values = _read_array(self._zip, spec.name, path)
                (self.scalars if values.ndim == 0 else self.per_sample)[spec.name] = values
            if shape:
                counts.add(shape[0])
        for name, (shape, _) in headers.items():
            if not shape and name not in self.scalars:
                raise DataError(f"--data {path}: array '{name}' is a scalar, expected samples on axis 0")
        self.has_labels = LABELS_KEY in headers
        if self.has_labels:
            counts.add(headers[LABELS_KEY][0][0])
        # Inputs whose leading dimensions differ cannot share a batch axis; arrays that are exactly
        # the model's static input shapes are then one feed (the backend-test layout).
        self.single_feed = (
            len(counts) > 1 and not self.has_labels and all(_fits(spec, headers[spec.name][0]) for spec in self.inputs)
        )
        if len(counts) > 1 and not self.single_feed:
            raise DataError(f"--data {path}: arrays disagree on the number of samples ({sorted(counts)})")
        self.num_samples = 1 if self.single_feed or not counts else counts.pop()
        if self.num_samples == 0:
            raise DataError(f"--data {path}: the arrays hold no samples")
        # without an input that has a batch axis, a run of the model is one sample
        self._one_per_run = all(spec.shape == () for spec in self.inputs)

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        scalars = dict(self.scalars)
        if self.single_feed:
            rows = {
                s.name: _NpyRows(self._zip, f"{s.name}.npy").read_all() for s in self.inputs if s.name not in scalars
            }
            yield Batch({s.name: scalars.get(s.name, rows.get(s.name)) for s in self.inputs})
            return
        size = 1 if self._one_per_run else batch_size
        ranges = split_at_scalars(sample_ranges(self.num_samples, size, limit, exact), self.per_sample, exact)
        names = [s.name for s in self.inputs if s.shape != ()] + ([LABELS_KEY] if self.has_labels else [])
        streams = {name: _NpyRows(self._zip, f"{name}.npy") for name in names}
        try:
            for start, n in ranges:
                arrays = {name: stream.read(n) for name, stream in streams.items()}
                labels = arrays.pop(LABELS_KEY, None)
                if labels is not None and labels.ndim == 2:
                    labels = labels.argmax(axis=1)
                for name, values in self.per_sample.items():
                    scalars[name] = np.array(values[start])  # a rank-0 array: the batch's one value
                yield Batch({s.name: scalars[s.name] if s.shape == () else arrays[s.name] for s in self.inputs}, labels)
        finally:
            for stream in streams.values():
                stream.close()


def check_array(spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> None:
    expected = describe_spec(spec)
    strings = spec.dtype.kind == "U" and dtype.kind in "US"
    if dtype != spec.dtype and not strings:
        raise DataError(f"--data {path}: input '{spec.name}' has dtype {dtype}, expected {spec.dtype} {expected}")
    if spec.shape is None:
        return
    if spec.shape == ():
        if len(shape) > 1:
            raise DataError(
                f"--data {path}: input '{spec.name}' is a scalar (rank 0): give one value for every sample (shape "
                f"[]) or one per sample (shape [N]), not shape {list(shape)}"
            )
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


def describe_spec(spec: TensorSpec) -> str:
    dims = ["?" if d is None else str(d) for d in (spec.shape or ())]
    return f"[{', '.join(dims)}]" if spec.shape is not None else "(any shape)"


def _read_header(archive: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with archive.open(member) as f:
            shape, _, dtype = _parse_npy_header(f)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"--data {path}: array '{member[:-4]}' is unreadable ({e})") from e
    return shape, dtype


def _read_array(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    """The whole of one small array (a scalar input's values)."""
    try:
        with archive.open(f"{name}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"--data {path}: array '{name}' is unreadable ({e})") from e


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
