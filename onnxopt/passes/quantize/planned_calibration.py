"""What the quantize pass learned from data, carried in a plan so a replay needs no calibration.

Calibration is most of what int8 costs to make: onnxruntime runs the calibration samples with every
activation exposed, ranges are searched, bias corrections summed, and GPTQ accumulates a Hessian per
layer, factors it and rounds the weight column by column (on ResNet-50 here, about 25 of the 32 s a
replay took when it recomputed all of it). A plan records the results instead -- each tensor's range
and method, the bias corrections' input means, and GPTQ's levels -- so ``--plan`` rebuilds the planned
model from the model alone, without running it, in less time than onnxruntime's ``quantize_static``.

GPTQ's levels are stored as their difference from nearest rounding at the same scales
(:func:`onnxopt.passes.quantize.gptq.nearest_levels`): on ResNet-50, 81 % of the differences are 0 and
all but 0.2 % of the rest +-1, so two bits per weight and zlib hold its 25.5 M weights in about 3.6 MB
(base64 in the plan's JSON).

All of it is tied to the graph it was learned on by :func:`graph_digest` (the pass's input: nodes,
attributes and every initializer's bytes): a replay whose graph differs (another onnxopt that rewrote
the earlier passes differently) calibrates again, and says so, rather than applying levels to weights
they were not rounded for.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import zlib
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.passes.quantize.activation_ranges import Ranges

#: zlib's level for the packed levels
LEVEL = 1


@dataclasses.dataclass
class PlannedCalibration:
    """A quantize pass's data-derived results, as a plan records them."""

    digest: str  # graph_digest of the pass's input
    ranges: Ranges  # tensor -> (low, high)
    methods: dict[str, str]  # calibration=auto: tensor -> the method chosen
    means: dict[str, np.ndarray]  # bias correction: tensor -> per-channel float64 mean
    rounding: dict[str, str]  # "node@weight_max" -> GPTQ's levels minus nearest's (encode_levels)

    def to_dict(self) -> dict[str, Any]:
        """The plan's ``calibration`` entries (JSON values)."""
        return {
            "graph_digest": self.digest,
            "chosen": dict(sorted(self.methods.items())),
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(self.ranges.items())},
            "means": {name: _encode_array(mean) for name, mean in sorted(self.means.items())},
            "learned_rounding": dict(sorted(self.rounding.items())),
        }

    @classmethod
    def of(cls, calibration: Any, digest: str) -> tuple[PlannedCalibration | None, str]:
        """The plan's calibration for a graph of ``digest``, or (None, why it cannot serve)."""
        if not isinstance(calibration, dict) or "graph_digest" not in calibration:
            return None, "the plan records no calibration results (saved by an older onnxopt)"
        if calibration["graph_digest"] != digest:
            return None, "the plan's calibration was learned on another graph (an earlier pass rewrote it differently)"
        try:
            ranges = {str(k): (float(lo), float(hi)) for k, (lo, hi) in calibration["ranges"].items()}
            means = {str(k): _decode_array(v) for k, v in calibration["means"].items()}
            rounding = {str(k): str(v) for k, v in calibration["learned_rounding"].items()}
            for text in rounding.values():  # decodable now: a damaged entry would fail halfway through the pass
                _payload(text)
            methods = {str(k): str(v) for k, v in (calibration.get("chosen") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
            return None, f"the plan's calibration is malformed ({type(e).__name__})"
        return cls(digest, ranges, methods, means, rounding), ""


def rounding_key(node_name: str, weight_max: int) -> str:
    return f"{node_name}@{weight_max}"


def encode_levels(levels: np.ndarray, nearest: np.ndarray) -> str:
    """``levels - nearest`` (same shape) packed for a plan: each difference clipped to -1..1 in two bits, the
    few beyond listed by flat index, all of it zlib'd (level 1: as small as level 9 once packed, and
    level 9 took a minute on ResNet-50's unpacked differences) and base64'd."""
    delta = levels.astype(np.int16).reshape(-1) - nearest.astype(np.int16).reshape(-1)
    clipped = np.clip(delta, -1, 1)
    beyond = np.flatnonzero(delta != clipped).astype("<i8")
    codes = np.zeros(-(-delta.size // 4) * 4, np.uint8)
    codes[: delta.size] = clipped + 1
    quads = codes.reshape(-1, 4)
    packed = quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6
    payload = b"".join([
        np.array([delta.size, beyond.size], "<u8").tobytes(), beyond.tobytes(),
        delta[beyond].astype("<i2").tobytes(), packed.astype(np.uint8).tobytes(),
    ])  # fmt: skip
    return "p:" + base64.b64encode(zlib.compress(payload, LEVEL)).decode("ascii")


def decode_levels(text: str, nearest: np.ndarray) -> np.ndarray:
    """The int8 levels :func:`encode_levels` stored against ``nearest``; ValueError if they do not fit it."""
    payload = _payload(text)
    size, count = (int(v) for v in np.frombuffer(payload[:16], "<u8"))
    if size != nearest.size:
        raise ValueError(f"stored levels hold {size} weights, the weight has {nearest.size}")
    beyond = np.frombuffer(payload[16 : 16 + 8 * count], "<i8")
    values = np.frombuffer(payload[16 + 8 * count : 16 + 10 * count], "<i2")
    packed = np.frombuffer(payload[16 + 10 * count :], np.uint8)
    if packed.size != -(-size // 4) or beyond.size != count or values.size != count:
        raise ValueError("stored levels are truncated")
    codes = (packed[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    delta = codes.reshape(-1)[:size].astype(np.int16) - 1
    delta[beyond] = values
    levels = nearest.astype(np.int16).reshape(-1) + delta
    if np.abs(levels).max(initial=0) > 127:
        raise ValueError("stored levels fall outside int8")
    return levels.astype(np.int8).reshape(nearest.shape)


def _payload(text: str) -> bytes:
    kind, _, data = text.partition(":")
    if kind != "p":
        raise ValueError("unknown level encoding")
    try:
        payload = zlib.decompress(base64.b64decode(data, validate=True))
    except (zlib.error, binascii.Error) as e:
        raise ValueError(f"undecodable levels ({e})") from e
    if len(payload) < 16:
        raise ValueError("stored levels are truncated")
    return payload


def graph_digest(graph: ir.Graph) -> str:
    """sha256 of what calibration depends on: each node (domain, type, name, inputs, outputs, attributes) in
    order and each initializer's name, type, shape and bytes."""
    digest = hashlib.sha256()
    for node in graph:
        inputs = [v.name if v is not None else "" for v in node.inputs]
        outputs = [v.name for v in node.outputs]
        digest.update(repr((node.domain, node.op_type, node.name, inputs, outputs)).encode())
        for name, attr in sorted(node.attributes.items()):
            value = attr.value
            if isinstance(value, ir.TensorProtocol):
                digest.update(name.encode() + value.tobytes())
            else:
                digest.update(repr((name, attr.type, value)).encode())
    for name, value in sorted(graph.initializers.items()):
        tensor = value.const_value
        digest.update(repr((name, value.dtype, value.shape)).encode())
        if tensor is not None:
            digest.update(tensor.tobytes())
    return digest.hexdigest()


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, np.float64)
    return {"shape": list(array.shape), "float64": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode_array(entry: dict[str, Any]) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(entry["float64"], validate=True), np.float64)
    return data.reshape([int(d) for d in entry["shape"]]).copy()
