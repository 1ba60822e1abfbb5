"""The tune's data, split once and seeded: what trials fit on, what selects among them, and what the chosen
model's metric is reported on (once, at the end, never seen before).

The parts are written as ``.npz`` files named by their content's digest, so every worker reads them
from a path, and a resumed tune finds the same files (and the trial cache the same keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxopt.data import open_dataset
from onnxopt.errors import DataError
from onnxopt.io.writing import write_bytes
from onnxopt.runtime import TensorSpec

#: Fractions of the samples for fitting/calibration, selection and the final held-out part.
FRACTIONS = (0.6, 0.2, 0.2)
#: Fewest samples each of selection and held-out may have: below this one sample is worth over 3 points.
MIN_PART = 30


@dataclasses.dataclass(frozen=True)
class Split:
    fit: Path
    select: Path
    held_out: Path
    counts: tuple[int, int, int]
    labels: bool  # whether the data has labels (the metric is then accuracy)


def split_data(spec: str, inputs: Sequence[TensorSpec], folder: Path, seed: int, held_out: str | None = None) -> Split:
    """Read every sample of ``spec`` (any ``--data`` source), shuffle them with ``seed`` and write the three
    parts into ``folder`` -- or, with ``held_out`` (``--eval-data``), two parts (fit 3/4, select 1/4) and
    ``held_out`` as the third. A one-line DataError when the data is too small to hold out anything honest."""
    arrays = _read(spec, inputs, seed)
    count = len(next(iter(arrays.values()))) if arrays else 0
    fractions = FRACTIONS if held_out is None else (0.75, 0.25, 0.0)
    sizes = [int(count * f) for f in fractions[1:]]
    if held_out is not None:
        held = _read(held_out, inputs, seed)
        sizes[1] = 0
        if len(next(iter(held.values()))) < MIN_PART:
            raise DataError(f"--eval-data {held_out}: fewer than {MIN_PART} samples to hold out")
    if min(s for s in sizes if s or held_out is None) < MIN_PART:
        need = int(np.ceil(MIN_PART / min(f for f in fractions[1:] if f)))
        kept = "40 %" if held_out is None else "25 % to select with"
        raise DataError(f"--data {spec}: {count} samples; tune needs at least {need} (it holds out {kept})")
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(count)
    bounds = [0, count - sum(sizes), count - sizes[1], count]
    paths = [_write_part({k: a[order[start:stop]] for k, a in arrays.items()}, folder)
             for start, stop in itertools.pairwise(bounds)]  # fmt: skip
    counts = [b - a for a, b in itertools.pairwise(bounds)]
    if held_out is not None:
        paths[2], counts[2] = _write_part(held, folder), len(next(iter(held.values())))
    return Split(paths[0], paths[1], paths[2], (counts[0], counts[1], counts[2]), "labels" in arrays)


def _read(spec: str, inputs: Sequence[TensorSpec], seed: int) -> dict[str, np.ndarray]:
    """Every sample of ``spec`` as arrays (``labels`` among them when every sample has one)."""
    dataset = open_dataset(spec, inputs, seed=seed)
    columns: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    for batch in dataset.batches(min(dataset.num_samples, 64) or 1):
        for name, array in batch.feeds.items():
            columns.setdefault(name, []).append(np.asarray(array))
        if batch.labels is not None:
            labels.append(np.asarray(batch.labels))
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    count = len(next(iter(arrays.values()))) if arrays else 0
    if labels and sum(len(x) for x in labels) == count:
        arrays["labels"] = np.concatenate(labels)
    return arrays


def _write_part(arrays: dict[str, np.ndarray], folder: Path) -> Path:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    path = folder / f"data-{digest.hexdigest()[:16]}.npz"
    if not path.exists():
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(path, buffer.getvalue())
    return path
