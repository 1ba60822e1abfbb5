"""Image folders: JPEG/PNG/BMP files (or ``.npy`` arrays) preprocessed into one model input.

Layout of the folder: either every image directly inside it (no labels), or
one sub-folder per class (labels from the sub-folder names: their integer
values when every name is an integer, else their index in sorted order --
torchvision's ImageFolder convention).

Preprocessing, in order: decode (Pillow) → channels (``gray``, ``rgb`` or
``bgr``; default from the model's channel count) → resize to ``size``
(bilinear) → ``float32 × scale`` (default 1/255) → ``(x − mean) / std`` per
channel → layout (``nchw`` or ``nhwc``; default from the model's input shape).
``.npy`` samples (``H×W`` or ``H×W×C``) go through the same steps after
decoding. Without ``size`` nothing is resized: every image must have the
same size (and the model's, when it is fixed) -- mixed sizes are an error, not
a silent resize. Every file's header is read when the dataset opens, so an
unreadable image fails before any work; pixels are decoded batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.data.batching import Batch, sample_ranges
from onnxopt.errors import DataError, one_line
from onnxopt.runtime import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".npy")
LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr", "gray")


@dataclass(frozen=True)
class ImageOptions:
    """How images become a model input; None fields are inferred from the model."""

    size: tuple[int, int] | None = None  # (height, width)
    layout: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1 / 255
    channels: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise DataError(f"--size {self.size}: expected a positive H or HxW")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise DataError(f"--layout {self.layout}: expected one of {', '.join(LAYOUTS)}")
        if self.channels is not None and self.channels not in CHANNEL_ORDERS:
            raise DataError(f"--channels {self.channels}: expected one of {', '.join(CHANNEL_ORDERS)}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise DataError("--std must not contain 0")
        if self.scale <= 0:
            raise DataError("--scale must be positive")
        for flag, values in (("--mean", self.mean), ("--std", self.std), ("--scale", (self.scale,))):
            if values is not None and not np.isfinite(values).all():
                raise DataError(f"{flag} must be finite (no nan or inf)")

    @classmethod
    def parse(
        cls,
        *,
        size: str | None = None,
        layout: str | None = None,
        mean: str | None = None,
        std: str | None = None,
        scale: str | float | None = None,
        channels: str | None = None,
    ) -> ImageOptions:
        """Options from command-line strings: ``size`` ``224`` or ``224x160`` (HxW); ``mean`` ``0.485,0.456,0.406``."""
        return cls(
            size=_parse_size(size) if size else None,
            layout=layout.lower() if layout else None,
            mean=_floats("--mean", mean) if mean else None,
            std=_floats("--std", std) if std else None,
            scale=_float("--scale", scale) if scale is not None else 1 / 255,
            channels=channels.lower() if channels else None,
        )

    @property
    def given(self) -> bool:
        return self != ImageOptions()


class ImageFolderDataset:
    """Images of a folder, preprocessed for a one-input image model."""

    def __init__(self, folder: Path, inputs: Sequence[TensorSpec], options: ImageOptions | None = None) -> None:
        options = options or ImageOptions()
        if len(inputs) != 1:
            raise DataError(f"--data {folder}: an image folder feeds a one-input model; this one has {len(inputs)}")
        self.spec = inputs[0]
        self.description = f"{folder} (images)"
        self.layout = options.layout or _model_layout(self.spec, folder)
        model_hw, model_c = _model_geometry(self.spec, self.layout)
        self.channels = options.channels or ("gray" if model_c == 1 else "rgb")
        self.num_channels = 1 if self.channels == "gray" else 3
        if model_c is not None and model_c != self.num_channels:
            raise DataError(
                f"--data {folder}: --channels {self.channels} gives {self.num_channels} channels, model takes {model_c}"
            )
        self.files, self.labels = _list_images(folder)
        self.has_labels = self.labels is not None
        self.num_samples = len(self.files)
        self.holds_arrays = any(f.suffix.lower() == ".npy" for f in self.files)  # may hold NaN/Inf
        self.options = options
        self.size = options.size or self._common_size(model_hw)
        if model_hw is not None and self.size != model_hw:
            raise DataError(
                f"--data {folder}: images are {self.size[0]}x{self.size[1]} but the model takes "
                f"{model_hw[0]}x{model_hw[1]}: give --size {model_hw[0]}x{model_hw[1]}"
            )
        self.mean = _per_channel("--mean", options.mean, self.num_channels, 0.0)
        self.std = _per_channel("--std", options.std, self.num_channels, 1.0)

    def batches(self, batch_size: int, limit: int | None = None, *, exact: bool = False) -> Iterator[Batch]:
        for start, n in sample_ranges(self.num_samples, batch_size, limit, exact):
            pixels = np.stack([self._load(f) for f in self.files[start : start + n]])
            if self.layout == "nchw":
                pixels = pixels.transpose(0, 3, 1, 2)
            labels = None if self.labels is None else np.asarray(self.labels[start : start + n], dtype=np.int64)
            yield Batch({self.spec.name: np.ascontiguousarray(pixels.astype(self.spec.dtype))}, labels)

    def _load(self, path: Path) -> np.ndarray:
        """One image as float32 H×W×C, preprocessed."""
        array = _decode(path, self.channels, self.num_channels, self.size)
        return ((array * np.float32(self.options.scale)) - self.mean) / self.std

    def _common_size(self, model_hw: tuple[int, int] | None) -> tuple[int, int]:
        sizes: dict[tuple[int, int], Path] = {}
        for path in self.files:
            sizes.setdefault(_image_size(path), path)
            if len(sizes) > 1:
                (a, pa), (b, pb) = sizes.items()
                raise DataError(
                    f"--data: images have mixed sizes ({a[0]}x{a[1]} in {pa.name}, {b[0]}x{b[1]} in {pb.name}); "
                    "give --size HxW to resize them"
                )
        return next(iter(sizes))


def _list_images(folder: Path) -> tuple[list[Path], list[int] | None]:
    entries = sorted(folder.iterdir())
    top = _image_files(folder)
    classes = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    in_classes = {c: files for c in classes if (files := _image_files(c))}
    if top and in_classes:
        raise DataError(f"--data {folder}: images both at the top and in class sub-folders; use one layout")
    if top:
        return top, None
    if not in_classes:
        raise DataError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder or its sub-folders")
    names = [c.name for c in in_classes]
    ids = [int(n) for n in names] if all(n.isdigit() for n in names) else list(range(len(names)))
    files, labels = [], []
    for label, (_, paths) in zip(ids, in_classes.items(), strict=True):
        files += paths
        labels += [label] * len(paths)
    return files, labels


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header only; an unreadable file is a DataError."""
    if path.suffix.lower() == ".npy":
        shape = _npy_array(path, mmap=True).shape
        return int(shape[0]), int(shape[1])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"--data: cannot read image {path}: {one_line(e, 200)}") from e


def _decode(path: Path, channels: str, num_channels: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if path.suffix.lower() == ".npy":
        return _prepare_npy(path, num_channels, size)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == "gray" else "RGB")
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32)
    except OSError as e:
        raise DataError(f"--data: cannot decode image {path}: {one_line(e, 200)}") from e
    array = array[..., None] if array.ndim == 2 else array
    return array[..., ::-1] if channels == "bgr" else array


def _prepare_npy(path: Path, num_channels: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    array = np.asarray(_npy_array(path, mmap=False), dtype=np.float32)
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[-1] != num_channels:
        raise DataError(f"--data: {path} has {array.shape[-1]} channels, the model takes {num_channels}")
    if array.shape[:2] != size:
        planes = [Image.fromarray(array[..., c], mode="F").resize((size[1], size[0])) for c in range(num_channels)]
        array = np.stack([np.asarray(p, dtype=np.float32) for p in planes], axis=-1)
    return array


def _npy_array(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"--data: cannot read {path}: {one_line(e, 200)}") from e
    if array.ndim not in (2, 3):
        raise DataError(f"--data: {path} has shape {list(array.shape)}; an image array is HxW or HxWxC")
    return array


def _model_layout(spec: TensorSpec, folder: Path) -> str:
    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise DataError(f"--data {folder}: input '{spec.name}' is not a 4-D image batch; use .npz or .npy data")
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "nhwc"
    if shape[1] in (1, 3):
        return "nchw"
    raise DataError(f"--data {folder}: cannot tell the layout of input '{spec.name}' {list(shape)}: give --layout")


def _model_geometry(spec: TensorSpec, layout: str) -> tuple[tuple[int, int] | None, int | None]:
    shape = spec.shape or (None, None, None, None)
    h, w, c = (shape[2], shape[3], shape[1]) if layout == "nchw" else (shape[1], shape[2], shape[3])
    hw = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    return hw, (c if isinstance(c, int) and c > 0 else None)


def _per_channel(flag: str, values: tuple[float, ...] | None, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    if len(values) not in (1, channels):
        raise DataError(f"{flag}: expected 1 or {channels} values, got {len(values)}")
    return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"--size {text}: expected H or HxW (integers)") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise DataError(f"--size {text}: expected H or HxW (positive integers)")
    return values[0], values[1]


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{flag} {text}: expected comma-separated numbers") from None


def _float(flag: str, value: str | float) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{flag} {value}: expected a number") from None
