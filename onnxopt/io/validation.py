"""The one validation every command puts a model file through before any work.

:func:`validate` reads the file once and refuses it with one line,
``<file>: ...``, when any of these fails, in this order:

1. it is a readable, non-empty, ONNX file whose external data is there (:func:`~.reading.read_model`);
2. structure (:func:`~.model_checks.structural_problem`): every tensor a node reads exists, no cycle, known
   domains, every initializer and constant holds exactly the bytes or values its dims and type say, and a
   convolution's ``kernel_shape`` matches its weight;
3. onnx's checker; the IR version and the default-domain opset are ones this onnx handles;
4. onnxruntime loads it: a session with graph optimizations disabled (the cheapest one, and the one
   verification runs anyway), handed back as :attr:`ValidModel.runner` for the command to reuse.

``optimize``, ``compare``, ``bench``, ``inspect``, ``tune`` and the API functions all call it, so a model is
refused by every command alike. What onnxruntime refuses only when it runs (a ``kernel_shape`` that
disagrees with the weight loads at every optimization level of onnxruntime 1.32) needs a check in step 2.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from onnxopt.errors import UnsupportedModelError
from onnxopt.io.reading import ModelFile, read_supported
from onnxopt.runtime import Runner


@dataclasses.dataclass(frozen=True)
class ValidModel:
    """A model file that passed :func:`validate`, and the onnxruntime session that loaded it."""

    file: ModelFile
    runner: Runner  # graph optimizations disabled: the verification runner of the file as it is


def validate(path: str | os.PathLike[str]) -> ValidModel:
    """Read and validate the model at ``path`` (see the module docstring); one-line errors name the file."""
    file = read_supported(Path(path))
    try:
        runner = Runner(file.source)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{file.path}: {e}") from e
    return ValidModel(file, runner)
