"""Input shapes for data onnxopt makes itself: ``--input-shape`` overrides, and the rule for unknown dims.

A model with symbolic dimensions (``[N, 3, H, W]``) says nothing about the
values random inputs should take there. The rule, per input, in order:

1. ``--input-shape NAME:1x3x640x640[,NAME2:...]`` (onnxsim's ``--overwrite-input-shape``
   syntax) gives the whole shape; the first dimension is the batch, which the
   run's batch size decides when the model leaves it open. A dimension the model
   fixes must agree, or it is an error naming the input.
2. A 4-D float input laid out as an image -- ``[N, C, H, W]`` with a known
   ``C`` of 1, 3 or 4, or ``[N, H, W, C]`` the same way -- gets unknown ``H``/``W``
   from its known sibling (a ``64×W`` text line becomes ``64×64``), else
   :data:`DEFAULT_IMAGE_SIZE` (224): a realistic image, not a 1×1 one that breaks
   a detector's Resize or a classifier's pooling.
3. Any other unknown dimension: the value already chosen for a dimension of the
   same name (symbolic names are shared across inputs; a size ``--input-shape``
   gives one input holds in all), else 1.

The model itself is never changed: these shapes only shape random inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnxopt.errors import DataError
from onnxopt.runtime import TensorSpec

#: H and W of an image input whose spatial size the model leaves open.
DEFAULT_IMAGE_SIZE = 224
_CHANNELS = (1, 3, 4)

InputShapes = Mapping[str, tuple[int, ...]]


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``"x:1x3x640x640,mask:1x640x640"`` -> ``{"x": (1, 3, 640, 640), "mask": (1, 640, 640)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise DataError(f"--input-shape {item}: expected NAME:D1xD2x... with positive integers (x:1x3x224x224)")
        if name in shapes:
            raise DataError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = shape
    return shapes


def check_input_shapes(shapes: InputShapes, inputs: Sequence[TensorSpec]) -> None:
    """Refuse overrides that name no input, or contradict the rank or a fixed dimension of one."""
    specs = {s.name: s for s in inputs}
    for name, shape in shapes.items():
        spec = specs.get(name)
        if spec is None:
            raise DataError(f"--input-shape {name}: the model has no input '{name}' (inputs: {', '.join(specs)})")
        if spec.shape is None:
            continue
        if len(spec.shape) != len(shape):
            raise DataError(
                f"--input-shape {name}: rank {len(shape)}, but the model's input has rank {len(spec.shape)}"
            )
        for axis, (model_dim, given) in enumerate(zip(spec.shape, shape, strict=True)):
            if isinstance(model_dim, int) and model_dim > 0 and model_dim != given:
                raise DataError(
                    f"--input-shape {name}: dimension {axis} is {given}, but the model fixes it at {model_dim}"
                )


def sample_shapes(
    inputs: Sequence[TensorSpec], shapes: InputShapes | None = None, dims: Mapping[str, int] | None = None
) -> dict[str, tuple[int, ...] | None]:
    """Each input's shape without its batch axis, every dimension concrete (``None``: unknown rank,
    ``()``: a scalar input without a batch axis), by the rule of this module; ``dims`` fixes symbolic
    dimensions by name first."""
    shapes = shapes or {}
    named: dict[str, int] = dict(dims or {})
    for spec in inputs:  # a size --input-shape gives a named dimension holds in every input that shares it
        if spec.name in shapes and spec.shape and len(spec.shape) == len(shapes[spec.name]):
            for dim, given in zip(spec.shape[1:], shapes[spec.name][1:], strict=True):
                if isinstance(dim, str) and dim:
                    named.setdefault(dim, given)
    out: dict[str, tuple[int, ...] | None] = {}
    for spec in inputs:
        if spec.name in shapes:
            out[spec.name] = tuple(shapes[spec.name][1:])
            continue
        if spec.shape is None or spec.shape == ():
            out[spec.name] = None if spec.shape is None else ()
            continue
        dims = list(spec.shape[1:])
        spatial = _image_axes(spec)
        known = [d for i, d in enumerate(dims) if i + 1 in spatial and _known(d)]
        resolved = []
        for i, dim in enumerate(dims):
            if _known(dim):
                resolved.append(int(dim))  # type: ignore[arg-type]
                continue
            if isinstance(dim, str) and dim in named:
                value = named[dim]
            elif i + 1 in spatial:
                value = int(known[0]) if known else DEFAULT_IMAGE_SIZE
            else:
                value = 1
            if isinstance(dim, str) and dim:
                named.setdefault(dim, value)
            resolved.append(value)
        out[spec.name] = tuple(resolved)
    return out


def guessed_dims(
    inputs: Sequence[TensorSpec], samples: Mapping[str, tuple[int, ...] | None], shapes: InputShapes | None = None
) -> dict[str, int]:
    """The dimensions after the batch axis that the model leaves open and the rule filled (``--input-shape``
    gave none of them), by label -- the symbolic name (``W``), or ``x[3]`` for an unnamed one -- with the
    size ``samples`` (:func:`sample_shapes`) gave each; a name shared by several inputs is listed once."""
    guessed: dict[str, int] = {}
    for spec in inputs:
        sample = samples.get(spec.name)
        if spec.name in (shapes or {}) or not spec.shape or sample is None:
            continue
        for axis, (dim, value) in enumerate(zip(spec.shape[1:], sample, strict=True), start=1):
            if not _known(dim):
                guessed.setdefault(_label(spec.name, axis, dim), value)
    return guessed


def input_shape_template(
    inputs: Sequence[TensorSpec], samples: Mapping[str, tuple[int, ...] | None], shapes: InputShapes | None = None
) -> str:
    """The ``--input-shape`` value to give for the inputs with guessed dimensions, those left as their labels
    for the user to fill (``x:1x3x48xW``; an unnamed dimension is ``?``); the batch axis is 1 unless fixed."""
    items = []
    for spec in inputs:
        sample = samples.get(spec.name)
        if spec.name in (shapes or {}) or not spec.shape or sample is None:
            continue
        dims = [str(spec.shape[0]) if _known(spec.shape[0]) else "1"]
        dims += [
            str(value) if _known(dim) else (dim if isinstance(dim, str) and dim else "?")
            for dim, value in zip(spec.shape[1:], sample, strict=True)
        ]
        if any(not _known(dim) for dim in spec.shape[1:]):
            items.append(f"{spec.name}:{'x'.join(dims)}")
    return ",".join(items)


def _label(name: str, axis: int, dim: int | str | None) -> str:
    return dim if isinstance(dim, str) and dim else f"{name}[{axis}]"


def _known(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim > 0


def _image_axes(spec: TensorSpec) -> tuple[int, ...]:
    """The H and W axes of a 4-D float input laid out as an image (NCHW or NHWC), else none."""
    if spec.shape is None or len(spec.shape) != 4 or np.dtype(spec.dtype).kind != "f":
        return ()
    if spec.shape[1] in _CHANNELS:
        return (2, 3)
    if spec.shape[3] in _CHANNELS:
        return (1, 2)
    return ()
