"""A trial's peak resident memory, and a stop when it passes ``--max-memory``.

:class:`MemoryWatch` wraps one trial in the process that runs it (a local worker or a Ray task): it resets
Linux's high-water mark of resident memory (``/proc/self/clear_refs``), polls the resident size from a thread,
and -- past the limit -- raises :class:`MemoryLimitExceeded` in the trial's thread at its next Python step (the
check cannot interrupt a single native call, so a trial stops shortly after it passes the limit, not before).
``peak`` is the kernel's high-water mark (``VmHWM``) where it could be reset, else the largest size polled.
The exception is a ``BaseException``: the pipeline's rollback of a failing pass must not swallow it.
Elsewhere than Linux nothing is measured and nothing is stopped.
"""

from __future__ import annotations

import ctypes
import threading
from types import TracebackType

from onnxopt.bench.proc_memory import reset_peak, status_bytes

POLL_SECONDS = 0.2


class MemoryLimitExceeded(BaseException):
    """A trial's resident memory passed ``--max-memory``."""


class MemoryWatch:
    """``with MemoryWatch(limit) as watch: ...`` then ``watch.peak`` (bytes or None) and ``watch.stopped``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.peak: int | None = None
        self.stopped = False
        self._polled = 0
        self._reset = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._target = threading.get_ident()
        self._thread = threading.Thread(target=self._poll, name="onnxopt-memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._reset = reset_peak()  # the high-water mark starts again from the current size
        try:
            self._thread.start()
            return self
        except MemoryLimitExceeded:  # over the limit from the first poll: the body never starts
            self._finish(withdraw=False)
            raise

    def _poll(self) -> None:
        while not self._done.is_set():
            size = status_bytes("VmRSS")
            if size is None:
                return
            self._polled = max(self._polled, size)
            if self.limit is not None and size > self.limit:
                with self._lock:
                    if not self._done.is_set() and not self.stopped:
                        self.stopped = True
                        _raise_in(self._target, MemoryLimitExceeded)
                return
            self._done.wait(POLL_SECONDS)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            self._finish(withdraw=self.stopped and not isinstance(error, MemoryLimitExceeded))
        except MemoryLimitExceeded:  # delivered while finishing: finish all the same, then it stops the trial
            self._finish(withdraw=False)
            raise

    def _finish(self, *, withdraw: bool) -> None:
        """Stop the poll (withdrawing a stop scheduled but not delivered) and take the peak."""
        with self._lock:
            self._done.set()
            if withdraw:
                _raise_in(self._target, None)
        self._thread.join()
        final = status_bytes("VmRSS") or 0
        high = status_bytes("VmHWM") if self._reset else None
        self.peak = max(high or 0, self._polled, final) or None


def _raise_in(thread_id: int, exception: type[BaseException] | None) -> None:
    """Schedule ``exception`` in the thread ``thread_id`` (None: cancel a scheduled one)."""
    given = ctypes.py_object(exception) if exception is not None else None  # None passes NULL: cancel
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), given)
