"""tune's successive halving on fine-tuning epochs: a sampled point that fine-tunes runs one epoch first,
and the best third of those is rerun at the passes' own epochs, reading the stages before from the cache."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import optuna

from onnxopt.progress import NullProgress
from onnxopt.tune import TuneOptions
from onnxopt.tune.space import (
    LOW_EPOCHS,
    at_full_epochs,
    at_low_epochs,
    cut_before_fine_tuning,
    fine_tunes,
    sample,
    starts_fine_tuning,
)
from onnxopt.tune.trial import TrialRecord, judge

MODELS = Path(__file__).resolve().parent.parent / "models"
DIGITS = MODELS / "digits_cnn" / "model.onnx"
EVERYTHING = {
    "prune_ratio": 0.25, "prune_importance": "l2", "distill": True, "clip_weights": False, "quantize": "static",
    "calibration": "minmax", "rounding": "nearest", "activations": "uint8", "qat": True, "low_rank": "none",
}  # fmt: skip


def test_a_point_that_fine_tunes_is_cut_before_each_fine_tuning_pass_and_runs_one_epoch_first() -> None:
    point = sample(optuna.trial.FixedTrial(EVERYTHING), 1, distill=True)
    assert fine_tunes(point)
    starts = [stage.split(",", 1)[0].split(":", 1)[0] for stage in point.stages]
    assert starts.count("distill") == 1 and starts.count("qat") == 1  # each begins a stage of its own
    assert [starts_fine_tuning(s) for s in point.stages] == [n in ("distill", "qat") for n in starts]
    low = at_low_epochs(point)
    assert low.epochs == LOW_EPOCHS and low.name == point.name
    entries = low.spec.split(",")
    assert [e for e in entries if e.startswith(("distill", "qat"))] == [
        f"distill:max_drop={{max_drop}};epochs={LOW_EPOCHS}".replace("{max_drop}", "0.02"),
        f"qat:time_budget=600;epochs={LOW_EPOCHS}",
    ]
    assert [e for e in entries if not e.startswith(("distill", "qat"))] == [
        e for e in point.spec.split(",") if not e.startswith(("distill", "qat"))
    ]
    full = at_full_epochs(point)
    assert full.spec == point.spec and full.epochs is None and full.name == "trial 1, full epochs"
    plain = sample(optuna.trial.FixedTrial({**EVERYTHING, "distill": False, "qat": False}), 2, distill=True)
    assert not fine_tunes(plain) and at_low_epochs(plain).spec == plain.spec
    assert cut_before_fine_tuning(("a,distill:x=1,b", "")) == ("a", "distill:x=1,b", "")


class _Scripted:
    """Workers that build nothing: each task's record is made up from its point (its size from a hash of the
    sampled choices), so the search's scheduling is what is tested."""

    size = 2
    ships_files = False

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []

    def map(self, fn, tasks):
        self.rounds.append([t.point.name for t in tasks])
        return [self._record(t) for t in tasks]

    def _record(self, task) -> TrialRecord:
        score = sum(ord(c) for c in repr(sorted(task.point.params.items()))) % 97 + 1
        return TrialRecord(
            task.point.name, task.point.spec, task.point.params, "ok", epochs=task.point.epochs, metric="accuracy",
            baseline=0.9, drop=0.0, size_bytes=1000 * score, macs=1000,
        )  # fmt: skip

    def put(self, path, digest):
        return path

    def close(self) -> None:
        pass


def test_the_best_third_of_first_rung_trials_is_rerun_at_full_epochs_and_not_told_to_the_sampler(tmp_path) -> None:
    from onnxopt.tune.run import _proxy, _search, _subject

    data = tmp_path / "d.npz"
    with np.load(MODELS / "digits_cnn" / "train.npz") as archive:
        np.savez(data, **{k: archive[k][:160] for k in archive.files})
    options = TuneOptions(data=(str(data),), cache=str(tmp_path / "cache"), trials=12, seed=5, max_drop=0.02)
    subject = _subject(DIGITS, tmp_path / "out.onnx", str(data), None, tmp_path / "cache", options)
    workers = _Scripted()
    _search([subject], workers, options, tmp_path / "cache", True, time.perf_counter(), NullProgress())

    # the search's first points: float16, then int8 weight storage alone
    assert [t.spec.rsplit(",", 1)[1] for t in subject.trials[:2]] == ["float16-weights", "quantize:weights_only=true"]
    assert not any("prune-channels" in t.spec or "low-rank" in t.spec for t in subject.trials[:2])
    first = [t for t in subject.trials if t.epochs == LOW_EPOCHS]
    reruns = [t for t in subject.trials if t.name.endswith(", full epochs")]
    assert len(first) >= 3  # the seeded sampler fine-tuned in at least three of its twelve points
    assert all(f"epochs={LOW_EPOCHS}" in t.spec for t in first)
    ranked = sorted(first, key=lambda t: (_proxy(t, subject, options), t.name))
    best = ranked[: math.ceil(len(first) / 3)]
    assert {t.name for t in best} <= {t.name for t in first if t.promoted}  # the best third, every one
    assert {t.name for t in reruns} == {f"{t.name}, full epochs" for t in first if t.promoted}
    by_name = {t.name: t for t in first}
    for rerun in reruns:
        low = by_name[rerun.name.removesuffix(", full epochs")]
        assert rerun.epochs is None and rerun.spec == low.spec.replace(f";epochs={LOW_EPOCHS}", "")
        assert rerun.params == low.params
    assert len(subject.study.trials) == 12  # the reruns are not new points for the sampler
    assert sum(len(r) for r in workers.rounds) == 12 + len(reruns)
    assert any("successive halving" in n for n in subject.notes)
    over = TrialRecord("trial 9", "x", {}, "ok", epochs=1, drop=0.5)
    assert judge(over, 0.02)[1].endswith("after 1 epoch of fine-tuning; not among the best third at that, so not rerun")
