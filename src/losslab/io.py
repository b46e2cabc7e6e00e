"""Atomic file writes: nothing a user made is lost or half-written.

Every result file losslab writes goes through these helpers: the content is written to a temporary file in the
same folder, flushed and fsynced, then renamed over the target (``os.replace`` is atomic on POSIX and Windows).
A killed process leaves either the old file or the new one, never a truncated mix. A folder that cannot be
written (read-only, full, no permission) raises :class:`losslab.errors.OutputError` naming the path and the fix,
before any work when the caller probes it with :func:`check_writable`, else when the write fails (the target
is then left as it was)::

    check_writable(out_dir)                      # before the work: OutputError if out_dir is not writable
    write_json_atomic(out_dir / "result.json", result)
    with atomic_path(out_dir / "model.bin") as tmp:  # any writer that takes a path
        save(tmp)
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from losslab.errors import ConfigError, OutputError

# errno values that mean "the disk/folder refuses the write", as opposed to a bug in the caller.
DISK_ERRNOS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is too large for the file system",
}


def is_disk_error(exc: BaseException) -> bool:
    """True for an ``OSError`` that says the output location refuses writes (read-only, full, no permission)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def output_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """The :class:`OutputError` for a failed write of ``path``: what happened and what to do."""
    reason = DISK_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(
        f"cannot write {str(path)!r}: {reason} ({exc.strerror or exc}); free space, fix the permissions or "
        "choose another output folder (--out-dir); nothing was left half-written"
    )


def check_writable(folder: str | os.PathLike[str], probe_bytes: int = 4096) -> Path:
    """Create ``folder`` if needed and prove it takes a file (written, fsynced, removed); :class:`OutputError` if not.

    Catches read-only mounts, missing permissions and an already full disk before any work starts. A disk that
    fills up later is caught by the atomic writers themselves.
    """
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".losslab-write-probe.", dir=target)
        try:
            os.write(fd, b"\0" * probe_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        if is_disk_error(exc):
            raise output_error(target, exc) from None
        raise
    return target


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if is_disk_error(exc):
            raise output_error(target, exc) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp_path, target)
    except OSError as exc:
        if is_disk_error(exc):
            raise output_error(target, exc) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], writer: Callable[[IO[str]], None]) -> Path:
    """Write a text file atomically with ``writer(file_handle)``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        writer(fh)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda fh: fh.write(text))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (non-JSON values are converted with ``str``)."""
    return write_atomic(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=str))


def write_yaml_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as YAML atomically."""
    return write_atomic(path, lambda fh: yaml.safe_dump(obj, fh, sort_keys=False))


def save_torch_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        sink = _RecordingWriter(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            # torch wraps a failed write (disk full) in its own RuntimeError; report the disk's error instead
            if sink.error is not None and is_disk_error(sink.error):
                raise output_error(path, sink.error) from None
            raise
    return Path(path)


class _RecordingWriter:
    """A binary file wrapper for ``torch.save`` that remembers the ``OSError`` of a failed write."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def check_output(path: Path | None, *, overwrite: bool, what: str, flag: str, folder: bool = False) -> None:
    """Fail before any work if ``path`` cannot be written: it exists (without ``--overwrite``; a folder may exist),
    is the wrong kind, or its nearest existing parent is not a writable folder."""
    if path is None:
        return
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is a file; give a folder for the {what}")
        if not folder and path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file name for the {what}")
        if not folder and not overwrite:
            raise ConfigError(f"{str(path)!r} already exists; pass {flag} NEW_PATH or --overwrite to replace it")
        parent = path if folder else path.parent
    else:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the {what} {str(path)!r}: {str(parent)!r} is not a writable folder")
