"""The tune's trial cache: content-addressed, so an interrupted tune resumes and a wider one reuses.

A trial's key is the sha256 of what decides its result -- the model's bytes, the recipe, the data parts'
bytes, the seed, the budget, onnxopt's version and its source code (:func:`trial_key`; a development build keeps
its version string while its passes change). Each entry is a folder holding
the trial's model (when it made one) and ``result.json``, written last: an entry without it was
interrupted and does not count. Entries are written under a temporary name and renamed, so two workers
finishing the same trial at once leave one whole entry.

The cache lives in the user's cache folder (:func:`default_folder`) unless ``--cache`` names another: a tune
leaves nothing beside its output but the model, its recipe, its plan and the data its rebuild reads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from onnxopt import __version__

RESULT = "result.json"
MODEL = "model.onnx"


def default_folder() -> Path:
    """Where trials are cached without ``--cache``: ``$XDG_CACHE_HOME/onnxopt/tune`` (an absolute
    ``XDG_CACHE_HOME``, as the XDG spec asks), else ``~/.cache/onnxopt/tune``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "onnxopt" / "tune"


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (0 when it does not exist): what the cache holds on disk."""
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):  # a staging entry renamed or removed while we walk
            total += path.stat().st_size if path.is_file() else 0
    return total


def trial_key(*parts: str) -> str:
    """sha256 of ``parts``, onnxopt's version and :func:`code_digest`, one per line."""
    return hashlib.sha256("\n".join([__version__, code_digest(), *parts]).encode()).hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 of onnxopt's own source files (names and bytes): a cached trial is reused only by the code that ran
    it. The version alone let a tune reuse trials that older passes had built."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class TrialCache:
    """Finished trials under ``folder`` (created when missing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The finished trial's result (``model`` set to its model's path, if it made one), or None."""
        entry = self.folder / key[:2] / key
        try:
            result = json.loads((entry / RESULT).read_text())
        except (OSError, ValueError):
            return None
        if result.get("has_model"):
            if not (entry / MODEL).is_file():
                return None
            result["model"] = str(entry / MODEL)
        return result

    def put(self, key: str, result: dict[str, Any], model: Path | None) -> dict[str, Any]:
        """Store a finished trial (``model`` copied in); returns what :meth:`get` will return."""
        entry = self.folder / key[:2] / key
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
        try:
            stored = {k: v for k, v in result.items() if k != "model"}
            stored["has_model"] = model is not None
            if model is not None:
                shutil.copyfile(model, staging / MODEL)
            (staging / RESULT).write_text(json.dumps(stored, indent=1, sort_keys=True, default=str) + "\n")
            with contextlib.suppress(OSError):  # another worker stored the same trial first: its entry serves
                os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        got = self.get(key)
        if got is None:
            raise OSError(f"{self.folder}: the trial cache could not store {key[:12]}")
        return got
