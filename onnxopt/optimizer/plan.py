"""Plans: every measured decision of a run, written down so another run replays it without measuring.

Some decisions depend on timing this machine (which nodes run int8 is chosen
by onnxruntime's per-node profile and interleaved latency ratios), so two runs
may decide differently. ``--save-plan PLAN.json`` writes what each pass
decided and what it measured to decide it; ``--plan PLAN.json`` replays those
decisions and times nothing. Same input, recipe, seed and plan give the same
bytes.

The file (JSON, schema :data:`SCHEMA`)::

    {"schema": "onnxopt.plan/1",
     "input_sha256": "...", "recipe": [[name, params], ...], "seed": 0,
     "machine": {"cpu": "Intel(R) Xeon(R) ...", "cpu_features": ["avx2", "avx512_vnni"], ...},
     "passes": {"17": {"pass": "quantize", "timed": true, "nodes": {"conv1": "int8", ...}, ...}}}

``verification`` (when the run compared outputs) is what the run measured about its result and how a replay
tells it rebuilt that very model (a :class:`Verification`: the sha256 of its final model, digests of the data
its guard and its evaluation ran on, each pass's outcome and the comparison; how a replay uses it:
:mod:`onnxopt.optimizer.verified_replay`).

A quantize pass also records what calibration gave it -- ranges, bias-correction means and GPTQ's levels
(:mod:`onnxopt.passes.quantize.planned_calibration`) -- so a replay builds the model without running it.

``passes`` is keyed by the pass's position in the recipe. A pass with
decisions to replay reads its own entry (:meth:`Plan.decisions_for`); what an
entry holds is the pass's business (the quantize pass documents its own). A
plan made for another input file, recipe or seed is refused with a one-line
error rather than replayed onto the wrong model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.bench.machine import machine_description
from onnxopt.errors import PlanError, one_line
from onnxopt.evaluate.agreement import OutputAgreement
from onnxopt.evaluate.compare import Comparison, feeds_key
from onnxopt.io.writing import write_bytes

SCHEMA = "onnxopt.plan/1"
#: Entries of a pass's ``calibration`` that are data, not decisions a person reads (bias means, GPTQ's levels:
#: megabytes on a large model), left out of reports: :meth:`Plan.to_dict` ``bulky=False``
BULKY = ("means", "learned_rounding")


@dataclasses.dataclass
class Plan:
    """Decisions by recipe position; ``replay`` when they come from a file (nothing is measured)."""

    input_sha256: str
    recipe: list[list[Any]]
    seed: int
    passes: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=machine_description)  # where it was measured
    replay: bool = False
    saved: bool = False  # recorded for --save-plan (passes then also record what only a replay needs)
    # what the planning run measured about its result, for a replay that rebuilds it exactly
    # (Verification.to_dict)
    verification: dict[str, Any] | None = None

    @classmethod
    def new(cls, recipe: list[tuple[str, dict[str, Any]]], seed: int, *, saved: bool = False) -> Plan:
        """A plan to record into (its input's hash is taken when it is saved); ``saved``: it will be."""
        return cls("", _recipe_list(recipe), seed, saved=saved)

    @property
    def timed(self) -> list[str]:
        """The passes whose recorded decisions were timed on this machine (not replayed)."""
        return [] if self.replay else [d["pass"] for _, d in sorted(self.passes.items()) if d.get("timed")]

    def decisions_for(self, index: int) -> dict[str, Any] | None:
        """The recorded decisions of the pass at recipe position ``index`` (None when recording)."""
        return self.passes.get(index) if self.replay else None

    def record(self, index: int, pass_name: str, decisions: dict[str, Any]) -> None:
        if not self.replay:
            self.passes[index] = {"pass": pass_name, **decisions}

    def to_dict(self, *, bulky: bool = True) -> dict[str, Any]:
        """The plan as saved; ``bulky=False`` (for reports) counts the entries of :data:`BULKY` instead of
        holding them."""
        passes = {str(k): v if bulky else _without_bulk(v) for k, v in sorted(self.passes.items())}
        return {
            "schema": SCHEMA,
            "input_sha256": self.input_sha256,
            "recipe": self.recipe,
            "seed": self.seed,
            "machine": self.machine,
            "passes": passes,
            "verification": self.verification,
        }

    def save(self, path: str | Path, model_path: Path) -> Path:
        """Write the plan for the input ``model_path`` atomically (sorted keys: the same decisions give the
        same file)."""
        self.input_sha256 = self.input_sha256 or file_sha256(model_path)
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_plain) + "\n"
        return write_bytes(Path(path), text.encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PlanError(f"{path}: cannot read plan: {one_line(e, 160)}") from e
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise PlanError(f"{path}: not an onnxopt plan (expected schema {SCHEMA})")
        try:
            passes = {int(k): dict(v) for k, v in data["passes"].items()}
            verification = data.get("verification")
            if verification is not None:  # read once now: a malformed one fails here, in one line
                Verification.from_dict(verification).planned_comparison()
            return cls(
                str(data["input_sha256"]), list(data["recipe"]), int(data["seed"]), passes,
                dict(data.get("machine") or {}), replay=True, verification=verification,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"{path}: malformed plan ({type(e).__name__}: {e})") from e

    def check_matches(self, model_path: Path, recipe: list[tuple[str, dict[str, Any]]], seed: int) -> None:
        """Refuse to replay onto another input, recipe or seed (one-line error)."""
        if file_sha256(model_path) != self.input_sha256:
            raise PlanError(f"the plan was made for another input file than {model_path} (sha256 differs)")
        if _recipe_list(recipe) != self.recipe:
            raise PlanError("the plan was made for another recipe: give the recipe it was saved with")
        if seed != self.seed:
            raise PlanError(f"the plan was made with --seed {self.seed}, not {seed}")

    def describe(self) -> str:
        """Where the decisions came from, for the summary."""
        features = ", ".join(self.machine.get("cpu_features") or []) or "none detected"
        return f"{self.machine.get('cpu') or 'an unnamed CPU'} (integer features: {features})"


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
        records = [
            {"name": r.name, "status": str(r.status), **{k: getattr(r, k) for k in MEASURED}} for r in result.records
        ]
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _recipe_list(recipe: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
    """The recipe as JSON would give it back (parameters as plain values, sorted)."""
    return json.loads(json.dumps([[name, dict(sorted(params.items()))] for name, params in recipe], default=_plain))


def _without_bulk(entry: dict[str, Any]) -> dict[str, Any]:
    calibration = entry.get("calibration")
    if not isinstance(calibration, dict) or not any(k in calibration for k in BULKY):
        return entry
    kept = {k: v for k, v in calibration.items() if k not in BULKY}
    kept["in_the_saved_plan"] = {k: len(calibration[k]) for k in BULKY if k in calibration}
    return {**entry, "calibration": kept}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)
