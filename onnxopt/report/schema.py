"""The report schema's envelope: what every report of every kind carries (:mod:`onnxopt.report` lists
the kinds and their content).

The producers of reports (an optimize run, a tune, a comparison, a benchmark) fill it; this module imports
none of them.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

SCHEMA = "onnxopt.report/2"
KINDS = ("optimize", "compare", "bench", "tune")


def json_safe(value: Any) -> Any:
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def envelope(kind: str, **content: Any) -> dict[str, Any]:
    """A report of ``kind``: the schema, when and with what it was made (versions, machine), and ``content``."""
    from onnxopt.bench import machine_description

    return json_safe(
        {
            "schema": SCHEMA,
            "kind": kind,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "machine": machine_description(),
            **content,
        }
    )


def _versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnx_ir
    import onnxruntime

    from onnxopt import __version__

    return {
        "onnxopt": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
