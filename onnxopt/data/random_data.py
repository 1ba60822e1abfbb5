"""Seeded random inputs shaped from a model's inputs: good for speed and agreement, never for accuracy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from onnxopt.data.batching import Batch, fixed_batch, sample_ranges
from onnxopt.data.input_shapes import (
    InputShapes,
    check_input_shapes,
    guessed_dims,
    input_shape_template,
    sample_shapes,
)
from onnxopt.errors import DataError, ModelRunError
from onnxopt.runtime import TensorSpec, ort_error_text

DEFAULT_RANDOM_SAMPLES = 8
#: A random batch larger than this is refused (a model's absurd static shape, not a real need).
MAX_RANDOM_BATCH_BYTES = 2 * 1024**3


def default_random(inputs: Sequence[TensorSpec], seed: int = 0, shapes: InputShapes | None = None) -> RandomDataset:
    """Random data for runs given no data: 8 samples, or one whole fixed batch if larger."""
    count = max(DEFAULT_RANDOM_SAMPLES, fixed_batch(inputs) or 0)
    return RandomDataset(inputs, count, seed=seed, shapes=shapes)


class RandomDataset:
    """Seeded random inputs shaped from the model's input specs; unknown dimensions are resolved by
    :mod:`onnxopt.data.input_shapes` (``shapes``: ``--input-shape`` overrides; ``dims``: by symbolic name).

    A dimension the model fixes at 0 is refused unless ``shapes`` gives that input a size: an empty tensor
    compares nothing. A scalar (rank-0) input gets one value per batch; when every input is a scalar, a batch
    is one sample."""

    has_labels = False

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        count: int,
        *,
        seed: int,
        dims: Mapping[str, int] | None = None,
        shapes: InputShapes | None = None,
    ) -> None:
        self.inputs = list(inputs)
        self.num_samples = count
        self.seed = seed
        self.shapes = dict(shapes or {})
        if shapes:
            check_input_shapes(shapes, self.inputs)
        for spec in self.inputs:
            if spec.shape and 0 in spec.shape and spec.name not in (shapes or {}):
                dims = "x".join(str(d) if isinstance(d, int) and d > 0 else "D" for d in spec.shape)
                raise DataError(
                    f"input '{spec.name}' has a dimension fixed at 0 ({list(spec.shape)}: an empty tensor), so random "
                    f"inputs would be empty; give --input-shape {spec.name}:{dims} with D the size to run "
                    "it at (the model keeps its 0), or --data"
                )
        self.sample_shapes = sample_shapes(self.inputs, shapes, dims)
        self.description = f"random:{count} (seed {seed})"

    def shapes_line(self, batch: int | str = 1) -> str:
        """The inputs this data makes, in one line, with a batch axis of ``batch``: ``x float32[1,3,48,48]
        (dynamic dims filled: W=48; set --input-shape x:1x3x48xW)``."""
        guessed = guessed_dims(self.inputs, self.sample_shapes, self.shapes)
        if not guessed:
            return self._tensors(batch) + (" (from --input-shape)" if self.shapes else "")
        filled = ", ".join(f"{label}={size}" for label, size in guessed.items())
        template = input_shape_template(self.inputs, self.sample_shapes, self.shapes)
        return f"{self._tensors(batch)} (dynamic dims filled: {filled}; set --input-shape {template})"

    def run_failure(self, error: Exception, batch: int | str = 1) -> ModelRunError:
        """``error`` -- onnxruntime failing on a batch of ``batch`` samples of this data -- as one line that says
        which inputs the model got and how to give it others (``--input-shape`` for guessed sizes, ``--data``)."""
        guessed = guessed_dims(self.inputs, self.sample_shapes, self.shapes)
        filled = ", ".join(f"{label}={size}" for label, size in guessed.items())
        given = self._tensors(batch) + (f" (dynamic dims filled: {filled})" if guessed else "")
        if guessed:
            template = input_shape_template(self.inputs, self.sample_shapes, self.shapes)
            fix = f"give --input-shape {template} with the sizes the model needs, or --data"
        else:
            fix = "give --data with real inputs, or --input-shape with the sizes the model needs"
        cause = ort_error_text(error.__cause__ or error, 300)
        return ModelRunError(f"onnxruntime cannot run the model on random inputs {given}: {cause}; {fix}")

    def _tensors(self, batch: int | str) -> str:
        """``x float32[1,3,48,48], mask bool[1,48]``: each input with its dtype and the shape it is made in."""
        parts = []
        for spec in self.inputs:
            sample = self.sample_shapes[spec.name]
            if spec.shape == ():
                parts.append(f"{spec.name} {spec.dtype.name} scalar")
            elif sample is None:
                parts.append(f"{spec.name} {spec.dtype.name}[unknown rank]")
            else:
                parts.append(f"{spec.name} {spec.dtype.name}[{','.join(str(d) for d in (batch, *sample))}]")
        return ", ".join(parts)

    def _sample_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        shape = self.sample_shapes[spec.name]
        if shape is None:
            raise DataError(
                f"input '{spec.name}' has unknown rank: random data cannot be shaped, give --data or --input-shape"
            )
        return shape

    def _shape(self, spec: TensorSpec, n: int) -> tuple[int, ...]:
        """A batch of ``n`` samples; a scalar input (rank 0) has no batch axis and stays a scalar."""
        if spec.shape == ():
            return ()
        return (n, *self._sample_shape(spec))

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for spec in self.inputs:
            shape = self._shape(spec, min(batch_size, self.num_samples))
            size = int(np.prod(shape, dtype=np.float64)) * max(spec.dtype.itemsize, 1)
            if size > MAX_RANDOM_BATCH_BYTES:
                raise DataError(
                    f"random data for input '{spec.name}' {list(shape)} would take {size / 1024**3:.1f} GiB "
                    "per batch; give --data or a smaller batch"
                )
        if all(spec.shape == () for spec in self.inputs):
            batch_size = 1  # no input has a batch axis: one run of the model is one sample
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
