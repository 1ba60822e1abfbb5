"""The values quantization-aware fine-tuning learned (``quantize:qat=auto``), carried onto other copies of the graph.

QAT trains one trial of the quantize pass -- the model with every node the speed search left int8 -- and
changes initializer values only: int8 weight levels, scales, int32 biases (:mod:`onnxopt.distill.qat`). The
budget's later trials keep more nodes float, and the pass writes the model once more at the end; each is a
fresh insertion of the same Q/DQ pairs under the same names. :class:`LearnedValues` puts the trained values
into such a copy where the tensor is the one QAT trained: same name, and the value QAT started from (a name
alone could be reused for another tensor of the same shape when a different set of nodes is kept float).

A plan records the values as the pass wrote them (:meth:`LearnedValues.to_plan`): int8 levels as their
difference from the levels the insertion gives before training (two bits a weight, as GPTQ's,
:func:`~onnxopt.passes.quantize.planned_calibration.encode_levels`), scales and int32 biases as they are.
A replay rebuilds the same insertion (the plan's graph digest ties them) and overwrites the same tensors, so
the bytes are the planning run's without training.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.passes.quantize.planned_calibration import decode_levels, encode_levels


@dataclasses.dataclass
class LearnedValues:
    """Trained initializer values by name, each with the value training started from (None: any)."""

    after: dict[str, np.ndarray]
    before: dict[str, np.ndarray | None]

    @classmethod
    def trained(cls, model: ir.Model, changed: dict[str, np.ndarray]) -> LearnedValues:
        """What QAT ``changed`` in ``model`` (the trial it trained), with ``model``'s values as the start."""
        start = {name: _value(model.graph, name) for name in changed}
        return cls(dict(changed), start)

    def apply(self, graph: ir.Graph) -> list[str]:
        """Overwrite the initializers that hold what training started from (dtype and shape alike); their names."""
        written: list[str] = []
        for name, array in sorted(self.after.items()):
            current = _value(graph, name)
            start = self.before.get(name)
            if current is None or current.dtype != array.dtype or current.shape != array.shape:
                continue
            if start is not None and not np.array_equal(current, start):
                continue  # another tensor under the trained one's name
            graph.initializers[name].const_value = ir.tensor(array, name=name)
            written.append(name)
        return written

    def to_plan(self) -> dict[str, Any]:
        """JSON values: int8 levels against the start, everything else raw (little-endian, base64)."""
        out: dict[str, Any] = {}
        for name, array in sorted(self.after.items()):
            start = self.before.get(name)
            if array.dtype == np.int8 and start is not None and start.shape == array.shape:
                out[name] = {"levels": encode_levels(array, start)}
            else:
                raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                out[name] = {"dtype": array.dtype.str.lstrip("<>|="), "shape": list(array.shape),
                             "data": base64.b64encode(raw.tobytes()).decode("ascii")}  # fmt: skip
        return out

    @classmethod
    def of_plan(cls, entry: dict[str, Any], graph: ir.Graph) -> LearnedValues:
        """The values a plan recorded, read against ``graph`` (the replay's fresh insertion, before training);
        ValueError when they do not fit it."""
        after: dict[str, np.ndarray] = {}
        for name, item in entry.items():
            if "levels" in item:
                start = _value(graph, name)
                if start is None or start.dtype != np.int8:
                    raise ValueError(f"the plan's trained levels of {name!r} have no int8 tensor to apply to")
                after[name] = decode_levels(str(item["levels"]), start)
            else:
                dtype = np.dtype(str(item["dtype"])).newbyteorder("<")
                data = np.frombuffer(base64.b64decode(item["data"], validate=True), dtype)
                after[name] = data.reshape([int(d) for d in item["shape"]]).astype(dtype.newbyteorder("="))
        return cls(after, dict.fromkeys(after))


def _value(graph: ir.Graph, name: str) -> np.ndarray | None:
    value = graph.initializers.get(name)
    return value.const_value.numpy() if value is not None and value.const_value is not None else None
