"""tune's space holds low rank and QAT; a trial reports its peak memory and stops past --max-memory."""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from onnxopt.bench.proc_memory import status_bytes
from onnxopt.tune import TuneOptions
from onnxopt.tune.memory_watch import MemoryLimitExceeded, MemoryWatch
from onnxopt.tune.space import label, sample

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits_cnn" / "model.onnx"
TRAIN = Path(__file__).resolve().parents[1] / "models" / "digits_cnn" / "train.npz"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident sizes come from /proc (Linux)")


def test_a_sampled_point_may_factor_and_fine_tune_in_the_order_their_preconditions_need() -> None:
    chosen = {
        "prune_ratio": 0.25, "prune_importance": "l2", "distill": True, "clip_weights": True, "quantize": "static",
        "calibration": "minmax", "rounding": "gptq", "activations": "uint8", "qat": True, "low_rank": "heads+convs",
    }  # fmt: skip
    point = sample(optuna.trial.FixedTrial(chosen), 1, distill=True)
    names = [entry.split(":", 1)[0] for entry in point.spec.split(",")]
    assert names.index("distill") < names.index("low-rank") < names.index("clip-weights") < names.index("quantize")
    assert names[-1] == "qat" and "low-rank:convs=4" in point.spec
    assert label(point.name, point.params).endswith("low-rank + convs + clip + quantize minmax/gptq/uint8 + qat")
    plain = sample(optuna.trial.FixedTrial({**chosen, "prune_ratio": 0.0, "low_rank": "none"}), 2, distill=False)
    assert "low-rank" not in plain.spec and "qat" not in plain.spec  # no tf extra: no QAT offered


@linux_only
def test_the_watch_reports_the_peak_and_stops_past_the_limit() -> None:
    with MemoryWatch(None) as free:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB touched
        del block
    assert free.peak is not None and free.peak >= 64 * 2**20 and not free.stopped
    start = status_bytes("VmRSS")
    assert start is not None
    blocks = []
    with pytest.raises(MemoryLimitExceeded), MemoryWatch(start + 32 * 2**20) as watch:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # grows until the watch stops it (a Python step after the limit)
            blocks.append(np.ones(8 * 2**20, dtype=np.uint8))
            time.sleep(0.01)
            if len(blocks) > 64:
                blocks.clear()  # stays well within the machine: 512 MiB at most
    assert watch.stopped and watch.peak is not None and watch.peak > start + 32 * 2**20
    assert not issubclass(MemoryLimitExceeded, Exception)  # the pipeline's rollback of a failing pass lets it through


@linux_only
def test_a_trial_past_max_memory_is_stopped_and_not_cached(tmp_path) -> None:
    from onnxopt.tune.run import _subject, _task
    from onnxopt.tune.space import builtin_points
    from onnxopt.tune.trial import run_trial

    data = tmp_path / "d.npz"
    with np.load(TRAIN) as archive:
        np.savez(data, **{k: archive[k][:200] for k in archive.files})
    options = TuneOptions(data=(str(data),), cache=str(tmp_path / "cache"), max_memory=0.001, builtins=("lossless",))
    subject = _subject(DIGITS, tmp_path / "out.onnx", str(data), None, tmp_path / "cache", options)
    task = _task(subject, builtin_points(False)[0], options, tmp_path / "cache")
    record = run_trial(task)
    assert record.status == "failed" and record.error == "stopped: resident memory passed --max-memory 0.001 GB"
    assert record.peak_memory is not None and record.peak_memory > 1000
    roomy = run_trial(dataclasses.replace(task, max_memory=None))
    assert roomy.status == "ok" and not roomy.cached and roomy.peak_memory is not None  # the stop was not cached


@linux_only
def test_under_a_memory_ceiling_training_plans_on_the_room_left_below_it() -> None:
    # a trial under --max-memory sizes its training batches to stay below it instead of being stopped
    from onnxopt.distill.batch_memory import CEILING_SHARE, available_bytes, memory_ceiling, memory_said

    resident = status_bytes("VmRSS")
    assert resident is not None
    free = available_bytes()
    assert memory_said().endswith("in half the memory")
    with memory_ceiling(resident + 2**30):
        under = available_bytes()
        assert under is not None and under <= 2 * CEILING_SHARE * 2**30 + 1
        assert under >= 2 * CEILING_SHARE * (2**30 - 2**27)  # what this process grows by meanwhile: well below
        assert "--max-memory" in memory_said()
        with memory_ceiling(resident // 2):  # already above it: no room at all
            assert available_bytes() == 0
    assert available_bytes() is not None and free is not None  # the ceiling is gone after the block
    assert memory_said().endswith("in half the memory")
