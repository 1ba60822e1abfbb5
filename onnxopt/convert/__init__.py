"""Conversion from Keras 3, SavedModel and TFLite to ONNX, verified against the source framework.

``convert_file(src, out)`` detects the source (:mod:`onnxopt.convert.sources`), converts it with
tf2onnx, runs the ONNX model in onnxruntime and the source in its own framework on the same inputs
(``data``, or seeded random ones), and writes the model (atomically) only if every output agrees
within tolerance: 1e-4 of the output's magnitude for Keras and SavedModel, 1e-5 for float TFLite, one
quantization step for integer TFLite. For float sources the tolerance has a floor in the source's own
numerical noise (:func:`noise_floor`), so an output that is small because of cancellation is not refused for
rounding the source itself does not reproduce. A mismatch is an error and writes nothing.

TensorFlow is imported only here and in :mod:`onnxopt.distill` (the ``tf`` extra).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from onnxopt import io
from onnxopt.convert.sources import Converted, Reference, detect
from onnxopt.data import RandomDataset, feed_samples, open_dataset
from onnxopt.errors import ConversionError
from onnxopt.runtime import Runner

DEFAULT_OPSET = 17
VERIFY_SAMPLES = 8
JITTER = 1e-6  # relative perturbation of float inputs that measures the source's noise
NOISE_MULTIPLE = 10.0  # the allowed difference is at least this many times the source's noise...
NOISE_CAP = 1e-2  # ...but the noise floor never allows more than this fraction of the output's magnitude


@dataclasses.dataclass
class OutputCheck:
    name: str
    max_abs: float
    allowed: float  # the largest |onnx - source| the tolerance allows for this output
    noise: float = 0.0  # the source's own change under a JITTER-relative input perturbation (float sources)


@dataclasses.dataclass
class ConversionResult:
    source: Path
    kind: str
    output: Path | None
    opset: int
    samples: int
    data: str
    checks: list[OutputCheck]
    transposes: int  # Transpose nodes left in the graph (what --nchw minimizes)
    notes: list[str] = dataclasses.field(default_factory=list)  # rewrites of the source before tf2onnx

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=0.0)


def convert_source(source: Path, *, opset: int = DEFAULT_OPSET, nchw: bool = False) -> Converted:
    """Convert ``source`` in memory (no verification)."""
    from onnxopt.convert import sources

    kind = detect(source)
    if kind == "keras":
        return sources.from_keras_file(source, opset, nchw)
    if kind == "savedmodel":
        return sources.from_saved_model(source, opset, nchw)
    return sources.from_tflite(source, opset, nchw)


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    opset: int = DEFAULT_OPSET,
    nchw: bool = False,
    data: str | None = None,
    seed: int = 0,
) -> ConversionResult:
    """Convert ``source``, verify it against the source framework, and write it to ``output``."""
    source = Path(source)
    if not io.MIN_OPSET <= opset <= io.MAX_OPSET:
        raise ConversionError(f"--opset {opset} is outside {io.MIN_OPSET}..{io.MAX_OPSET}")
    if output is not None:
        target = Path(output)
        if target.resolve() == source.resolve():
            raise ConversionError(f"{target}: refusing to write over the source")
        io.check_writable(target.parent if str(target.parent) else Path("."))
    converted = convert_source(source, opset=opset, nchw=nchw)
    checks, samples, description = verify(converted, data=data, seed=seed)
    written = io.save(converted.proto, output) if output is not None else None
    transposes = sum(1 for n in converted.proto.graph.node if n.op_type == "Transpose")
    return ConversionResult(
        source, converted.kind, written, opset, samples, description, checks, transposes, list(converted.notes)
    )


def verify(converted: Converted, *, data: str | None = None, seed: int = 0) -> tuple[list[OutputCheck], int, str]:
    """Run the ONNX model and the source on the same inputs; a one-line error when an output differs.

    Output i passes when max |onnx - source| <= allowed_i, where for a float source (``relative``)
    allowed_i = max(tolerance_i × max |source_i|, :func:`noise_floor`), and for integer TFLite
    allowed_i = tolerance_i (one quantization step: a perturbation that crosses a rounding boundary moves an
    output by a whole step, which is no measure of noise).
    """
    runner = Runner(converted.proto.SerializeToString())
    if data:
        dataset = open_dataset(data, runner.inputs, seed=seed)
    else:
        dataset = RandomDataset(runner.inputs, VERIFY_SAMPLES, seed=seed)
    names = runner.output_names
    worst = np.zeros(len(names))
    scale = np.zeros(len(names))
    noise = np.zeros(len(names))
    samples = 0
    batch = 1 if converted.per_sample else VERIFY_SAMPLES
    rng = np.random.default_rng(seed)
    jitter_rng = np.random.default_rng([seed, 1])
    for item in dataset.batches(batch, VERIFY_SAMPLES, exact=converted.per_sample):
        feeds = dict(item.feeds)
        if not data:  # integer inputs (quantized TFLite) over their whole range, not random 0/1
            for spec in runner.inputs:
                if spec.dtype in (np.int8, np.uint8):
                    info = np.iinfo(spec.dtype)
                    feeds[spec.name] = rng.integers(info.min, info.max + 1, feeds[spec.name].shape).astype(spec.dtype)
        ours = runner.run(feeds)
        theirs = converted.reference(feeds)
        if len(theirs) != len(ours):
            raise ConversionError(f"the source has {len(theirs)} outputs, the converted model {len(ours)}")
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if a.shape != b.shape:
                raise ConversionError(f"output '{names[i]}': shape {a.shape} after conversion, {b.shape} in the source")
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            worst[i] = max(worst[i], float(diff.max()) if diff.size else 0.0)
            scale[i] = max(scale[i], float(np.abs(b.astype(np.float64)).max()) if b.size else 0.0)
        if converted.relative:
            noise = np.maximum(noise, source_noise(converted.reference, feeds, theirs, jitter_rng))
        samples += feed_samples(feeds)
    checks = []
    for i, name in enumerate(names):
        relative = converted.tolerance[i] * (max(scale[i], 1e-12) if converted.relative else 1.0)
        floor = noise_floor(float(noise[i]), float(scale[i])) if converted.relative else 0.0
        allowed = max(relative, floor)
        checks.append(OutputCheck(name, float(worst[i]), float(allowed), float(noise[i])))
        if worst[i] > allowed * (1 + 1e-6):
            how = "relative" if converted.relative else "absolute"
            why = f"{converted.tolerance[i]:g} {how}"
            if floor > relative:
                why = f"{NOISE_MULTIPLE:g}× the source's own noise {noise[i]:.3g}"
            raise ConversionError(
                f"output '{name}' differs from the source by {worst[i]:.3g} (allowed {allowed:.3g}: "
                f"{why}); the conversion is not trustworthy"
            )
    return checks, samples, dataset.description


def source_noise(
    reference: Reference, feeds: dict[str, np.ndarray], outputs: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Per output, max |source(x) - source(x')| where x' is x with every float input element multiplied by
    (1 + JITTER × u), u uniform in [-1, 1] (integer inputs unchanged); 0 for integer outputs.

    A perturbation of a few float32 ulps changes a well-conditioned output by about JITTER of its magnitude,
    and an output computed by cancellation by the rounding noise of the large terms that cancelled: what the
    source's own arithmetic does not determine.
    """
    jittered = {
        name: (x * (1 + JITTER * rng.uniform(-1, 1, x.shape))).astype(x.dtype) if x.dtype.kind == "f" else x
        for name, x in feeds.items()
    }
    again = reference(jittered)
    noise = np.zeros(len(outputs))
    for i, (b, c) in enumerate(zip(outputs, again, strict=True)):
        if b.dtype.kind == "f" and b.size and b.shape == c.shape:
            noise[i] = float(np.abs(b.astype(np.float64) - c.astype(np.float64)).max())
    return noise


def noise_floor(noise: float, scale: float) -> float:
    """The smallest difference a float output is allowed: NOISE_MULTIPLE × the source's noise on it, capped at
    NOISE_CAP of its magnitude, so that an output the perturbation moves a lot (a discontinuity: an argmax, a
    selection) does not excuse a conversion that changes it."""
    return min(NOISE_MULTIPLE * noise, NOISE_CAP * scale)


__all__ = [
    "ConversionError",
    "ConversionResult",
    "convert_file",
    "convert_source",
    "noise_floor",
    "source_noise",
    "verify",
]
