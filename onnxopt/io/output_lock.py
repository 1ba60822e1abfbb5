"""One writer per output: a run that is about to write ``OUT`` holds an exclusive lock on it until it is done.

A second run asking for the same output fails at once, before doing any
work, with a message naming the run that holds it -- instead of both
computing and the later rename silently winning. The lock is an advisory
``flock`` on ``.OUT.onnxopt-lock`` next to the output: the kernel releases it
when the holder exits in any way (even killed), so a crash leaves no stale
lock, only a small file the next run reuses and removes. Where ``fcntl`` does
not exist (Windows) the lock is skipped and atomic renames alone protect
the output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from onnxopt.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def exclusive_output(path: Path) -> Iterator[None]:
    """Hold the lock of output ``path`` for the duration of the block."""
    if fcntl is None:
        yield
        return
    lock = path.with_name(f".{path.name}.onnxopt-lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{path.parent}: output folder is not writable ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{path}: another onnxopt run (pid {holder}) is writing this output; wait for it or choose another"
            ) from None
        # The holder before us may have removed the file between our open and our lock: retry on a fresh one.
        if _same_file(fd, lock):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
