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


class ModelRunError(UnsupportedModelError):
    """onnxruntime made a session for the model but failed to run it on the inputs given (often random inputs
    whose guessed sizes the model cannot take: the caller that made them says which, and how to set them)."""


class DataError(OnnxoptError):
    """The data given with ``--data`` does not fit the model."""


class RecipeError(OnnxoptError):
    """A recipe or pass specification is malformed or names unknown things."""


class ConfigError(RecipeError, ValueError):
    """A pass's configuration holds an impossible value (also a ValueError, as configs raised before)."""


class PlanError(RecipeError):
    """A plan file is unreadable or was made for another input, recipe or seed."""


class ConversionError(OnnxoptError):
    """The source cannot be converted, or the converted model does not compute what the source does."""


class TuneError(OnnxoptError):
    """A tune that cannot start: a bad objective or budget, no data, an unreachable Ray cluster."""


class OutputError(OnnxoptError):
    """The output cannot be written where asked."""


class PassPreconditionError(OnnxoptError):
    """A pass was run without what it needs (data, the original model): run it through a Pipeline."""


class UnsupportedOp(OnnxoptError):
    """The graph holds an op (or an attribute of one) that fine-tuning's trainable twin does not implement."""


def one_line(error_or_text: BaseException | object, limit: int | None = 300) -> str:
    """``error_or_text`` as one line for a message: whitespace (the checker's and onnxruntime's line breaks)
    squashed to single spaces, an error without a message named by its type, and text longer than ``limit``
    characters cut at the last space before the limit and ended with "…". A word is never cut in two: text
    whose first word alone passes the limit keeps that word whole. ``limit=None`` keeps the whole line."""
    text = " ".join(str(error_or_text).split())
    if not text and isinstance(error_or_text, BaseException):
        text = type(error_or_text).__name__
    if limit is None or len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit)  # the kept text and its ellipsis fit in ``limit``
    if space < 0:
        space = text.find(" ")  # one long first word: whole, then the ellipsis
    if space < 0:
        return text  # one word: nothing to cut at
    return text[:space].rstrip(" ,;:") + "…"
