"""What the quantize pass records in a plan (``--save-plan``) and reads back (``--plan``): :class:`QuantizePlanEntry`.

The JSON is what it always was: ``compute`` and each node's precision are :class:`enum.StrEnum` members,
written as their strings.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Compute(enum.StrEnum):
    """What the whole quantized model computes in."""

    INT8 = "int8"  # int8 kernels where the decisions allow (nodes kept float run float)
    FLOAT = "float"  # float compute on every node, weights stored int8
    NONE = "none"  # nothing written: the pass declined (the model is left float)


class Precision(enum.StrEnum):
    """What one node computes in, and how its weights are stored."""

    INT8 = "int8"
    FLOAT = "float"  # float compute, exact weights
    FLOAT_COMPUTE = "float compute, int8 weights"


@dataclasses.dataclass
class QuantizePlanEntry:
    """One quantize pass's decisions: which nodes keep float compute and which of those exact weights, each
    node's precision, what calibration learned and what the searches measured."""

    compute: Compute = Compute.INT8
    float_nodes: list[str] = dataclasses.field(default_factory=list)
    exact_nodes: list[str] = dataclasses.field(default_factory=list)
    timed: bool = False  # decided by timing (fallback=profile): the summary says so
    target: str = ""  # the integer target rounded for (onnxopt.passes.quantize.cpu_target)
    nodes: dict[str, Precision] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)  # method + PlannedCalibration.to_dict
    measured: dict[str, Any] = dataclasses.field(default_factory=dict)  # the search's measurements

    @classmethod
    def decided(
        cls, every: set[str], excluded: set[str], exact: set[str], compute: Compute, **fields: Any
    ) -> QuantizePlanEntry:
        """The entry for a run over nodes ``every`` that kept ``excluded`` float, ``exact`` of them with exact
        weights, computing in ``compute``."""

        def precision(name: str) -> Precision:
            if compute == Compute.NONE or (name in excluded and name in exact):
                return Precision.FLOAT
            if compute == Compute.FLOAT:  # float compute everywhere (weights_only, or int8 not faster)
                return Precision.FLOAT if name in exact else Precision.FLOAT_COMPUTE
            return Precision.FLOAT_COMPUTE if name in excluded else Precision.INT8

        return cls(
            compute=compute,
            float_nodes=sorted(excluded & every),
            exact_nodes=sorted(exact & every),
            nodes={name: precision(name) for name in sorted(every)},
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """The plan's entry (JSON values; keys in the order plans have always had them)."""
        return {
            "timed": self.timed,
            "target": self.target,
            "compute": str(self.compute),
            "float_nodes": list(self.float_nodes),
            "exact_nodes": list(self.exact_nodes),
            "nodes": {name: str(p) for name, p in self.nodes.items()},
            "calibration": self.calibration,
            "measured": self.measured,
        }

    @classmethod
    def of(cls, entry: dict[str, Any]) -> QuantizePlanEntry:
        """A plan's entry read back; what it lacks (or holds but does not name a value of) takes the defaults:
        an int8 run that kept nothing float."""
        compute = str(entry.get("compute", "int8"))
        nodes = {str(k): str(v) for k, v in (entry.get("nodes") or {}).items()}
        return cls(
            compute=Compute(compute) if compute in set(Compute) else Compute.INT8,
            float_nodes=list(entry.get("float_nodes", [])),
            exact_nodes=list(entry.get("exact_nodes", [])),
            timed=bool(entry.get("timed", False)),
            target=str(entry.get("target", "")),
            nodes={k: Precision(v) for k, v in nodes.items() if v in set(Precision)},
            calibration=entry.get("calibration") or {},
            measured=entry.get("measured") or {},
        )
