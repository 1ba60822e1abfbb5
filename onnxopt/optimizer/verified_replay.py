"""Verified replay: a plan's measurements carried over to a replay that rebuilt exactly the planned model.

A replay (``--plan``) makes the same decisions, so on the same data it builds
the same model -- and the same bytes measure the same on the same data. What
the planning run measured about its result (each pass's guard drift, the
quantizer's output SNRs, the final comparison) therefore holds for the
replay's result *when the two are identical*, and running it all again only
costs time: on a ResNet-50 the guard and the comparison were about half of a
replay.

So a planning run stores a :class:`Verification` in the plan: the sha256 of
its final model (:func:`model_sha256`), digests of the data its guard and
its evaluation ran on (:func:`data_digest`), each pass's outcome and the
comparison. A replay whose guard data has the same digest runs the passes
without the guard (no reference outputs, no session per pass), and passes
skip measurements that only go to their log (``Context.measurements_carried``).
At the end the replay's model is hashed: the same sha256 -- and every pass
with the same status -- and the plan's measurements are the replay's, said so
in the summary; anything else (another onnxruntime, onnxopt or data, a pass
that would have been rolled back) and the run is repeated with the guard,
measured from scratch, saying why. Nothing unverified is ever reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.evaluate.agreement import OutputAgreement
from onnxopt.evaluate.compare import Comparison, feeds_key

#: The parts of a pass record that are measurements (carried from the plan); the rest the replay redoes itself.
MEASURED = ("max_drift", "details", "missed")


def model_sha256(model: ir.Model) -> str:
    """The sha256 of ``model`` serialized (weights included): equal models, equal digests."""
    return hashlib.sha256(ir.serde.serialize_model(model).SerializeToString(deterministic=True)).hexdigest()


def data_digest(batches: Iterable[Any]) -> str:
    """A digest of data batches (:class:`onnxopt.data.Batch`, or plain feed dicts): feeds and labels."""
    digest = hashlib.blake2b(digest_size=16)
    for item in batches:
        feeds = item if isinstance(item, dict) else item.feeds
        digest.update(feeds_key(feeds))
        labels = None if isinstance(item, dict) else item.labels
        if labels is not None:
            digest.update(np.ascontiguousarray(labels).view(np.uint8).reshape(-1))
    return digest.hexdigest()


@dataclasses.dataclass
class Verification:
    """What a planning run measured about its final model, and how to tell a replay rebuilt that model."""

    model_sha256: str
    guard_data: str  # data_digest of the guard's feeds
    eval_data: str  # data_digest of what the comparison ran on
    max_drift: float
    records: list[dict[str, Any]]  # per pass record: name, status and the MEASURED fields
    comparison: dict[str, Any]  # Comparison.to_dict(), without per-layer errors

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def of_run(cls, digest: str, guard_data: str, eval_data: str, result: Any, comparison: Comparison) -> Verification:
        """From a planning run's PipelineResult ``result`` and its comparison."""
        records = [{"name": r.name, "status": r.status, **{k: getattr(r, k) for k in MEASURED}} for r in result.records]
        compared = {**comparison.to_dict(), "layers": None}
        return cls(digest, guard_data, eval_data, float(result.max_drift), records, compared)

    def mismatch(self, digest: str, records: list[Any]) -> str | None:
        """Why a replay's result is not the planned one (None: it is)."""
        statuses = [(r.name, r.status) for r in records]
        planned = [(r["name"], r["status"]) for r in self.records]
        if statuses != planned:
            changed = next((f"{a[0]} {b[1]} -> {a[1]}" for a, b in zip(statuses, planned, strict=False) if a != b), "")
            return f"the passes did not end as planned ({changed or 'another pass list'})"
        if digest != self.model_sha256:
            return "the rebuilt model differs from the planned one (sha256; another onnxruntime or onnxopt?)"
        return None

    def carry(self, records: list[Any]) -> None:
        """Give the replay's pass records the planned measurements (their counts and notes are the replay's)."""
        for record, planned in zip(records, self.records, strict=True):
            for key in MEASURED:
                setattr(record, key, planned[key])

    def planned_comparison(self) -> Comparison:
        data = dict(self.comparison)
        outputs = [OutputAgreement(**o) for o in data.pop("outputs")]
        return Comparison(outputs=outputs, **data)
