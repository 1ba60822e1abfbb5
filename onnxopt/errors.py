"""Typed errors of onnxopt.

Every error a user can cause (a bad file, bad data, impossible parameters)
is an :class:`OnnxoptError`; the CLI prints its message as one line and exits
with status 2. Anything else escaping is a bug in onnxopt.
"""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base of every error caused by input or usage; its message is one line."""


class ModelLoadError(OnnxoptError):
    """The model file is missing, empty, truncated, not ONNX, or invalid."""


class UnsupportedModelError(OnnxoptError):
    """The model is valid ONNX but uses something onnxopt does not handle."""


class DataError(OnnxoptError):
    """The data given with ``--data`` does not fit the model."""


class RecipeError(OnnxoptError):
    """A recipe or pass specification is malformed or names unknown things."""


class OutputError(OnnxoptError):
    """The output cannot be written where asked."""


class PassPreconditionError(OnnxoptError):
    """A pass was run without what it needs (data, the original model): run it through a Pipeline."""
