"""What every pass configuration shares: its ``Literal`` fields checked once, from the type hints.

A pass's Config is a frozen dataclass; a field annotated ``Literal["a", "b"]`` may hold only those values.
``validate_literals(self)`` in ``__post_init__`` checks them all, instead of each Config listing its
choices a second time by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from onnxopt.errors import ConfigError


def validate_literals(config: Any) -> None:
    """Raise :class:`ConfigError` (``"<field> must be one of a, b, not 'x'"``) for the first ``Literal``
    field of the dataclass instance ``config`` that holds none of its values."""
    for name, allowed in _literal_fields(type(config)).items():
        value = getattr(config, name)
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")


@functools.cache
def _literal_fields(config: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(config)
    out = {}
    for f in dataclasses.fields(config):
        hint = hints[f.name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        options = typing.get_args(hint) if union else (hint,)
        literals = [typing.get_args(o) for o in options if typing.get_origin(o) is typing.Literal]
        if literals:
            allowed = tuple(v for values in literals for v in values)
            # None stays allowed when the field is Optional
            out[f.name] = allowed + ((None,) if type(None) in options else ())
    return out
