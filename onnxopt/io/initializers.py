"""The loop both storage formats share: turn some initializers of a graph into another form."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import onnx

T = TypeVar("T")


def convert_initializers(
    graph: onnx.GraphProto, convert: Callable[[onnx.TensorProto], T | None]
) -> list[tuple[onnx.TensorProto, T]]:
    """Apply ``convert`` to every initializer that is not also a graph input or output (those must stay
    dense tensors); each one it converts (a result other than None) leaves ``graph.initializer`` and is
    returned with its converted form, the others stay in their order."""
    interface = {v.name for v in graph.input} | {v.name for v in graph.output}
    kept: list[onnx.TensorProto] = []
    converted: list[tuple[onnx.TensorProto, T]] = []
    for tensor in graph.initializer:
        form = None if tensor.name in interface else convert(tensor)
        if form is None:
            kept.append(tensor)
        else:
            converted.append((tensor, form))
    if converted:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return converted
