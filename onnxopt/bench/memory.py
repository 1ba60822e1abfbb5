"""Peak resident memory of one model's session, measured in a fresh process.

Memory cannot be attributed to one of several sessions sharing a process, so
each (model, provider, batch) is measured in a child process
(``python -m onnxopt.bench.memory``): it imports onnxruntime, records its
resident set, resets the kernel's high-water mark (Linux ``clear_refs``),
creates the session, runs it a few times, and reports the high-water mark.

``peak_rss_bytes`` is the child's peak resident set; ``session_bytes`` is that
peak minus the resident set before the session existed -- what loading and
running the model cost. On systems without ``/proc`` the peak is
``getrusage``'s, which cannot be reset, and ``session_bytes`` is None.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.bench.proc_memory import reset_peak, status_bytes
from onnxopt.errors import UnsupportedModelError

RUNS = 3


@dataclass(frozen=True)
class MemoryUse:
    peak_rss_bytes: int
    session_bytes: int | None


def measure(path: Path, provider: str, feeds: Mapping[str, np.ndarray], *, threads: int = 0) -> MemoryUse:
    """Peak memory of a session over ``path`` on ``provider`` running ``feeds``, in a child process."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-mem-") as tmp:
        inputs = Path(tmp) / "feeds.npz"
        np.savez(inputs, **dict(feeds))
        cmd = [sys.executable, "-m", "onnxopt.bench.memory", str(path), provider, str(inputs), str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UnsupportedModelError(f"{path}: memory probe on {provider} failed: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return MemoryUse(result["peak_rss_bytes"], result["session_bytes"])


def _probe(path: str, provider: str, inputs: str, threads: int) -> dict[str, int | None]:
    from onnxopt.bench.session import TimedSession

    with np.load(inputs) as archive:
        feeds = {k: archive[k] for k in archive.files}
    before = status_bytes("VmRSS")
    resettable = before is not None and reset_peak()
    session = TimedSession(Path(path), provider, threads=threads)
    session.bind(feeds)
    for _ in range(RUNS):
        session.run()
    peak = status_bytes("VmHWM") if resettable else None
    if peak is None:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "session_bytes": None}
    return {"peak_rss_bytes": peak, "session_bytes": max(peak - (before or 0), 0)}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
