"""This process's memory and the system's, as Linux's ``/proc`` tells them; None where there is no ``/proc``.

One reader for every place that sizes or watches memory: the session memory probe (:mod:`onnxopt.bench.memory`),
a tune trial's watch (:mod:`onnxopt.tune.memory_watch`) and training batches (:mod:`onnxopt.distill.batch_memory`).
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _field_bytes(path: Path, field: str) -> int | None:
    """The ``field:`` line of ``path`` (a value in kB) in bytes, or None."""
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def status_bytes(field: str) -> int | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process in bytes."""
    return _field_bytes(_STATUS, field)


def system_available_bytes() -> int | None:
    """``MemAvailable``: what the system can give without swapping, in bytes."""
    return _field_bytes(_MEMINFO, "MemAvailable")


def reset_peak() -> bool:
    """Restart this process's high-water mark (``VmHWM``) from its current size; whether that worked."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False
