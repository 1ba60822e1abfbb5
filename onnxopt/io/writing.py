"""Atomic writing: outputs appear whole or not at all, and a failed or interrupted write leaves nothing behind.

* A file is written to a temporary name in its target folder, then renamed
  over the target (a rename within one folder is atomic), so readers see the
  old file or the new one, never a partial one. Any failure -- a full disk,
  a file-size limit, an interrupt -- removes the temporary file.
* A model with external data is a *pair* of files. The data file is renamed
  into place first under a name no existing file has, then the model; only
  then are the old model's data files removed. An interruption in between
  leaves the old pair intact.
* :func:`check_writable` probes a folder by creating a file in it, so a run
  fails before doing any work rather than at the end (``os.access`` says
  yes to root even where the file system will say no).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

import onnx

from onnxopt.errors import OutputError
from onnxopt.io.external_data import data_files


def check_writable(folder: Path) -> None:
    """Refuse a folder that does not exist or where no file can be created."""
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".onnxopt-probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"{folder}: output folder is not writable ({e.strerror or e})") from e
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    folder = _folder(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from e
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())  # mkstemp makes 0600 files; outputs get the usual umask-based mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, a size limit, an interrupt: leave nothing behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from e
        raise
    return path


def write_model_with_data(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` with its tensors in a side file next to ``path``, replacing any old pair safely."""
    folder = _folder(path)
    old_data = _data_files(path) if path.is_file() else set()
    data_name = f"{path.name}.data"
    if (folder / data_name).exists():
        data_name = f"{path.name}.{secrets.token_hex(4)}.data"  # never clobber the data of the model in place
    moved: Path | None = None
    try:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=folder) as staging:
            staged = Path(staging) / path.name
            copy = onnx.ModelProto()
            copy.CopyFrom(proto)  # onnx.save_model moves the data out of the proto it is given
            onnx.save_model(
                copy,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            moved = folder / data_name
            os.replace(Path(staging) / data_name, moved)
            os.replace(staged, path)
    except BaseException as e:
        if moved is not None and not _refers_to(path, data_name):
            moved.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from e
        raise
    for name in old_data - {data_name}:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
    return path


def _file_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _data_files(path: Path) -> set[str]:
    """Names of the external data files ``path`` refers to (none if it cannot be read)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable old file has no data files worth keeping track of
        return set()
    return {name for name in data_files(proto) if "/" not in name and "\\" not in name}


def _refers_to(path: Path, data_name: str) -> bool:
    return path.is_file() and data_name in _data_files(path)
