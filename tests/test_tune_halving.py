"""tune's successive halving on fine-tuning epochs: a sampled point that fine-tunes runs one epoch first, and
those first runs that missed the budget by least are rerun at the passes' own epochs, ahead of new points."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna

from onnxopt.progress import NullProgress
from onnxopt.tune import TuneOptions
from onnxopt.tune.space import LOW_EPOCHS, at_full_epochs, at_low_epochs, fine_tunes, label, sample
from onnxopt.tune.trial import TrialRecord, judge, within_budget

MODELS = Path(__file__).resolve().parent.parent / "models"
DIGITS = MODELS / "digits_cnn" / "model.onnx"
EVERYTHING = {
    "prune_ratio": 0.25, "prune_importance": "l2", "distill": True, "clip_weights": False, "quantize": "static",
    "calibration": "minmax", "rounding": "nearest", "activations": "uint8", "qat": True, "low_rank": "none",
}  # fmt: skip


def test_a_point_that_fine_tunes_runs_one_epoch_first_and_its_rerun_is_the_point_as_sampled() -> None:
    point = sample(optuna.trial.FixedTrial(EVERYTHING), 1, distill=True)
    assert fine_tunes(point)
    low = at_low_epochs(point)
    assert low.epochs == LOW_EPOCHS and low.name == point.name and len(low.stages) == len(point.stages)
    entries = low.spec.split(",")
    assert [e for e in entries if e.startswith(("distill", "qat"))] == [
        f"distill:max_drop=0.02;epochs={LOW_EPOCHS}",
        f"qat:time_budget=600;epochs={LOW_EPOCHS}",
    ]
    assert [e for e in entries if not e.startswith(("distill", "qat"))] == [
        e for e in point.spec.split(",") if not e.startswith(("distill", "qat"))
    ]
    assert label(low.name, low.params, low.epochs).endswith(
        " + distill 1 epoch + quantize minmax/nearest/uint8 + qat 1 epoch"
    )
    full = at_full_epochs(point)
    assert full.spec == point.spec and full.epochs is None and full.name == "trial 1, full epochs"
    plain = sample(optuna.trial.FixedTrial({**EVERYTHING, "distill": False, "qat": False}), 2, distill=True)
    assert not fine_tunes(plain) and at_low_epochs(plain).spec == plain.spec


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
        """Within the budget, over it or stopped early, by a hash of the choices; a full-epochs run halves the drop."""
        score = sum(ord(c) for c in repr(sorted(task.point.params.items()))) % 97 + 1
        drop = {0: 0.0, 1: 0.03 + score / 1000, 2: 0.2 + score / 1000}[score % 3] / (1 if task.point.epochs else 2)
        point = task.point
        if score % 3 == 2:
            return TrialRecord(point.name, point.spec, point.params, "pruned", epochs=point.epochs, rung_drop=drop)
        return TrialRecord(
            point.name, point.spec, point.params, "ok", epochs=point.epochs, metric="accuracy", baseline=0.9,
            drop=drop, size_bytes=1000 * score, macs=1000,
        )  # fmt: skip

    def put(self, path, digest):
        return path

    def close(self) -> None:
        pass


def test_the_first_runs_that_missed_the_budget_by_least_are_rerun_at_full_epochs_ahead_of_new_points(tmp_path) -> None:
    from onnxopt.tune.run import _search, _subject

    data = tmp_path / "d.npz"
    with np.load(MODELS / "digits_cnn" / "train.npz") as archive:
        np.savez(data, **{k: archive[k][:160] for k in archive.files})
    options = TuneOptions(data=(str(data),), cache=str(tmp_path / "cache"), trials=16, seed=8, max_drop=0.02)
    subject = _subject(DIGITS, tmp_path / "out.onnx", str(data), None, tmp_path / "cache", options)
    workers = _Scripted()
    _search([subject], workers, options, tmp_path / "cache", True, time.perf_counter(), NullProgress())

    # the search's first points: float16, then int8 weight storage alone, then int8 compute
    assert [t.spec.rsplit(",", 1)[1] for t in subject.trials[:2]] == ["float16-weights", "quantize:weights_only=true"]
    assert subject.trials[2].spec.endswith(
        ",equalize,quantize:calibration=percentile;rounding=gptq;activations=uint8;bias_correct=true;max_drop=0.02"
    )
    assert not any("prune-channels" in t.spec or "low-rank" in t.spec for t in subject.trials[:3])
    first = [t for t in subject.trials if t.epochs == LOW_EPOCHS]
    assert all(f"epochs={LOW_EPOCHS}" in t.spec for t in first)
    missed = {t.name: t.drop if t.status == "ok" else t.rung_drop for t in first}
    feasible = {t.name for t in first if t.status == "ok" and within_budget(t.drop, 0.02)}
    over = sorted((d, n) for n, d in missed.items() if n not in feasible)
    assert feasible and len(over) >= 2  # the scripted results hold both kinds
    promoted = {t.name for t in first if t.promoted}
    assert promoted and not promoted & feasible  # a first run within the budget is never rerun
    assert over[0][1] in promoted and len(promoted) < len(over)  # the closest miss is rerun, not every miss
    reruns = [t for t in subject.trials if t.name.endswith(", full epochs")]
    assert sorted(t.name for t in reruns) == sorted(f"{n}, full epochs" for n in promoted)
    assert len({t.spec for t in reruns}) == len(reruns)  # one rerun per recipe
    by_name = {t.name: t for t in first}
    for rerun in reruns:
        low = by_name[rerun.name.removesuffix(", full epochs")]
        assert rerun.epochs is None and rerun.spec == low.spec.replace(f";epochs={LOW_EPOCHS}", "")
    for index, names in enumerate(workers.rounds):  # reruns lead their round, after their first run's round
        count = sum(n.endswith(", full epochs") for n in names)
        assert all(n.endswith(", full epochs") for n in names[:count])
        for name in names[:count]:
            assert any(name.removesuffix(", full epochs") in r for r in workers.rounds[:index])
    assert len(subject.study.trials) == 16  # the reruns are not new points for the sampler
    assert sum(len(r) for r in workers.rounds) == 16 + len(reruns)
    assert any("successive halving" in n for n in subject.notes)
    over_record = TrialRecord("trial 9", "x", {}, "ok", epochs=1, drop=0.5)
    assert judge(over_record, 0.02)[1] == "drop 0.500 > --max-drop 0.02; after 1 epoch of fine-tuning"
