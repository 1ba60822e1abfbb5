"""Where trials run: a local process pool (the default) or Ray tasks (``--ray auto|ADDRESS``, the ``ray`` extra).

Both map a function over tasks and return the results in the tasks' order, whichever finishes first, so
the search sees the same sequence either way (the same seed chooses the same recipe locally and on Ray).
Local trials read the model and the data from paths. Ray trials share no storage with the tune
(``ships_files``): the model and data parts go into Ray's object store once each (:meth:`RayPool.put`), every
node writes them to its own scratch folder, and each trial's model comes back as bytes
(:func:`onnxopt.tune.trial.run_trials`) -- so the nodes of a cluster need no shared filesystem. Ray tasks are
spread over the cluster's nodes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from onnxopt.errors import TuneError, one_line


class Workers(Protocol):
    size: int
    ships_files: bool  # the workers may not see the tune's files: they travel with the tasks (put)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def put(self, path: str, digest: str) -> Any: ...

    def close(self) -> None: ...


class LocalPool:
    """``size`` worker processes (spawned: onnxruntime's threads do not survive a fork)."""

    ships_files = False

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._pool = concurrent.futures.ProcessPoolExecutor(self.size, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(fn, items))

    def put(self, path: str, digest: str) -> Any:
        return path  # local workers read the file where it is

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayPool:
    """Ray tasks of one CPU each, on the cluster at ``address`` (``auto``: what ``ray.init()`` finds -- the
    ``RAY_ADDRESS`` cluster or the latest ``ray start`` on this machine -- else a new local instance)."""

    ships_files = True

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise TuneError("--ray needs Ray: pip install 'onnxopt[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            if address != "auto":
                _check_reachable(address)
            try:
                ray.init(address=None if address == "auto" else address, ignore_reinit_error=True,
                         log_to_driver=False, include_dashboard=False)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise TuneError(f"--ray {address}: cannot connect ({one_line(e, 160)})") from e
        self.size = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote: dict[Callable, Any] = {}
        self._objects: dict[str, Any] = {}  # digest -> ObjectRef of the file's bytes

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        remote = self._remote.setdefault(fn, self._ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(fn))
        return self._ray.get([remote.remote(item) for item in items])

    def put(self, path: str, digest: str) -> Any:
        """The object reference of the file's bytes, put into the object store once per digest."""
        if digest not in self._objects:
            with open(path, "rb") as f:
                self._objects[digest] = self._ray.put(f.read())
        return self._objects[digest]

    def close(self) -> None:
        pass  # the cluster (or the caller's ray.init) outlives the tune


def open_workers(ray: str | None, processes: int) -> Workers:
    """Ray when ``ray`` is given, else ``processes`` local processes."""
    return RayPool(ray) if ray else LocalPool(processes)


def default_processes() -> int:
    """One worker per core (trials are not timed: sharing cores slows them, it does not skew them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_reachable(address: str) -> None:
    """A one-line TuneError, within seconds, when nothing listens at ``address`` (``host:port`` or
    ``ray://host:port``) -- Ray itself retries for a minute."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise TuneError(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise TuneError(f"--ray {address}: unreachable ({e.strerror or e})") from None
