"""Faults: unwritable folders, a full disk, interrupts, concurrent runs -- never a partial or corrupt output."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BUNDLED
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io
from onnxopt.cli import main
from onnxopt.io import writing
from onnxopt.progress import PLAIN_PREFIX

MODEL = BUNDLED / "model.onnx"
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxopt.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kwargs,  # type: ignore[arg-type]
    )


def _slow_model(path: Path) -> Path:
    """A model that takes seconds to evaluate on a few hundred random samples."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.05, (32, 32, 3, 3)).astype(np.float32), "w"),
        *(numpy_helper.from_array(rng.uniform(0.5, 1.5, 32).astype(np.float32), n) for n in ("g", "v")),
        *(numpy_helper.from_array(rng.normal(0, 0.1, 32).astype(np.float32), n) for n in ("b", "m")),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"]),
        helper.make_node("Conv", ["n1", "w"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 64, 64])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _wait_for(condition, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _one_line(stderr: str) -> str:
    """The one line a failed run leaves on stderr, besides its plain progress lines (stderr is a pipe here)."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(PLAIN_PREFIX)]
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------------ unwritable folder


def test_unwritable_folder_fails_before_any_work(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
    elif Path("/sys").is_dir() and not os.access("/sys/onnxopt-probe", os.F_OK):
        folder = Path("/sys")  # root may write anywhere DAC allows; sysfs still refuses new files
    else:
        pytest.skip("no folder this user cannot write to")
    assert main(["optimize", str(MODEL), "-o", str(folder / "out.onnx")]) == 2
    line = _one_line(capfd.readouterr().err)
    assert "output folder is not writable" in line
    assert not (folder / "out.onnx").exists()


# ------------------------------------------------------------------ full disk


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("external", [False, True])
def test_disk_full_during_save_leaves_nothing(tmp_path: Path, external: bool) -> None:
    """A real OS-level write failure halfway through the file (RLIMIT_FSIZE: 'File too large')."""
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    args = ["optimize", str(MODEL), "-o", str(out), "--data", "random:4", *(["--external-data"] if external else [])]
    proc = _cli(*args, preexec_fn=_limit_file_size(200_000))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "File too large" in _one_line(stderr)
    assert list(out.parent.iterdir()) == []


def test_no_space_left_at_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writing.os, "replace", full)
    with pytest.raises(Exception, match="No space left on device"):
        io.save(onnx.load(str(MODEL)), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_a_long_run(tmp_path: Path, sig: signal.Signals) -> None:
    """The run holds its output lock and waits on its --data (a FIFO nobody writes): interrupted there, it
    leaves nothing behind -- whatever the machine's speed, the signal lands mid-run."""
    model = _slow_model(tmp_path / "slow.onnx")
    before = model.read_bytes()
    out = tmp_path / "out.onnx"
    fifo = tmp_path.parent / f"{tmp_path.name}-data.npy"
    os.mkfifo(fifo)
    # Ctrl-C's default action, however this test was launched: a shell starting it in the background (nohup,
    # `cmd &`) leaves SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child.
    default = lambda: signal.signal(sig, signal.SIG_DFL)  # noqa: E731
    proc = _cli("optimize", str(model), "-o", str(out), "--data", str(fifo), preexec_fn=default)
    lock = tmp_path / ".out.onnx.onnxopt-lock"
    assert _wait_for(lock.exists, timeout=600), "the run never started"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=600)  # a hang guard, not a speed limit
    assert proc.returncode == 130, stderr
    assert "interrupted" in _one_line(stderr) and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.onnx"]
    assert model.read_bytes() == before


def test_interrupt_during_save_removes_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writing.os, "replace", interrupted)
    assert main(["optimize", str(MODEL), "-o", str(tmp_path / "out.onnx"), "--passes", "fold-bn"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_external_data_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.onnx"
    first = onnx.load(str(MODEL))
    io.save(first, out, external_data=True)
    io.save(first, out, external_data=True)  # a clean overwrite: a new data file, the old one removed
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == "m.onnx" and names[1].startswith("m.onnx.") and names[1].endswith(".data")
    expected = onnx.load(str(out))
    real_replace = os.replace

    def interrupt_model_rename(src: str, dst: str) -> None:
        if str(dst).endswith(".onnx"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(writing.os, "replace", interrupt_model_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save(first, out, external_data=True)
    monkeypatch.undo()
    assert len(list(tmp_path.iterdir())) == 2  # the old pair, nothing else
    reloaded = onnx.load(str(out))
    assert reloaded.SerializeToString() == expected.SerializeToString()
    onnx.checker.check_model(str(out), full_check=True)


# ------------------------------------------------------------------ concurrent runs


def test_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    model = _slow_model(tmp_path / "slow.onnx")
    out = tmp_path / "out.onnx"
    first = _cli("optimize", str(model), "-o", str(out), "--data", "random:300")
    assert _wait_for((tmp_path / ".out.onnx.onnxopt-lock").exists)
    second = _cli("optimize", str(MODEL), "-o", str(out), "--passes", "fold-bn")
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    assert f"another onnxopt run (pid {first.pid})" in _one_line(stderr)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    onnx.checker.check_model(str(out), full_check=True)
    assert {n.op_type for n in onnx.load(str(out)).graph.node} == {"Conv"}  # the first run's model, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "slow.onnx"]


def test_concurrent_runs_on_different_outputs_both_succeed(tmp_path: Path) -> None:
    runs = [_cli("optimize", str(MODEL), "-o", str(tmp_path / f"{i}.onnx"), "--data", "random:8") for i in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    for i in range(2):
        onnx.checker.check_model(str(tmp_path / f"{i}.onnx"), full_check=True)
