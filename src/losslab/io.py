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

import contextlib
import errno
import json
import os
import re
import tempfile
import time
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
        _sweep_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
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
    except Exception as exc:  # a writer that wraps the OSError in its own error (safetensors, torch)
        disk = _disk_error_in(exc)
        if disk is not None:
            raise output_error(target, disk) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _disk_error_in(exc: BaseException) -> OSError | None:
    """The disk error (full, read-only, quota, ...) a library reported inside its own exception, if any: a chained
    ``OSError``, or the text of one (safetensors reports "No space left on device (os error 28)" as a string)."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_disk_error(seen):
            return seen  # type: ignore[return-value]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for number in DISK_ERRNOS:
        if os.strerror(number) in text:
            return OSError(number, os.strerror(number))
    return None


def _sweep_stale_temporaries(target: Path) -> None:
    """Remove ``.NAME.PID.XXXX.tmp`` files of ``target`` left by a process that was killed (SIGKILL, power cut)
    between creating and renaming its temporary file; files of a live process are left alone."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"([0-9]+)\.[A-Za-z0-9_]+\.tmp")
    for entry in os.scandir(target.parent):
        found = pattern.fullmatch(entry.name)
        if found is not None and entry.is_file(follow_symlinks=False) and not _alive(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is another user's, or cannot be asked: leave its files alone
    return True


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
    """``torch.save`` to ``path`` atomically; a dict gets the SHA-256 of its content under
    :data:`losslab.serialization.CHECKSUM_KEY`, which :func:`losslab.serialization.load_torch_file` verifies."""
    import torch

    from losslab.serialization import CHECKSUM_KEY, content_digest

    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: content_digest(obj)}

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


# ---------------------------------------------------------------------------------------------------- claiming
#: The marker file of a folder losslab made for its outputs (a report folder, a study folder). Its JSON names the
#: kind of folder; a folder without it that holds anything is the user's and is never written into.
OUTPUT_MARKER = ".losslab-output"


def claim_output(path: str | os.PathLike[str], *, overwrite: bool, what: str, flag: str) -> Path:
    """Claim the file ``path`` before any work: it must be new, or ``overwrite`` replaces it (atomically, later).

    Refused (:class:`losslab.errors.ConfigError`, naming ``flag`` and the fix): an existing file without
    ``overwrite``; a folder; a symbolic link (the write would replace the link, not what it points at, which is
    never what was meant); a parent that is a file or is not writable. ``-`` (stdout) is always allowed.
    """

    target = Path(path)
    if str(target) == "-":
        return target
    if target.is_symlink():
        raise ConfigError(f"{flag} {str(target)!r} is a symbolic link; give the path of a new file for the {what}")
    if target.is_dir():
        raise ConfigError(f"{flag} {str(target)!r} is a folder; give a file name for the {what}")
    if target.exists() and not overwrite:
        raise ConfigError(
            f"{flag} {str(target)!r} already exists and losslab does not replace files silently; choose a new "
            f"file for the {what}, or pass --overwrite to replace it"
        )
    if target.exists() and not target.is_file():
        raise ConfigError(f"{flag} {str(target)!r} is not a regular file; give a file name for the {what}")
    _check_parent(target.parent, flag, what)
    return target


def _check_parent(parent: Path, flag: str, what: str) -> None:
    """The nearest existing ancestor of ``parent`` must be a writable folder (the rest is created)."""

    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write the {what} into {str(parent)!r}: it is not a writable folder")


def claim_output_dir(
    folder: str | os.PathLike[str],
    *,
    kind: str,
    outputs: list[str],
    overwrite: bool,
    flag: str,
    adopt: Callable[[Path], bool] | None = None,
) -> Path:
    """Claim ``folder`` for losslab's outputs of ``kind`` ("report", "study"), before any work.

    - a new or empty folder is created and marked (:data:`OUTPUT_MARKER`, JSON ``{"kind": kind}``);
    - a folder marked for ``kind`` is reused; if any of ``outputs`` (names inside it) exists, only with
      ``overwrite`` (``overwrite=True`` for outputs that are updated in place by design, e.g. a study's files);
    - a folder that holds anything and no marker (or a marker of another kind) is the user's: refused, with or
      without ``overwrite``. ``adopt(folder)`` may recognise a losslab folder made before markers existed (it is
      then marked);
    - a path that is a file or a symbolic link is refused.

    Raises :class:`losslab.errors.ConfigError` naming ``flag`` and the fix; nothing is written then.
    """

    target = Path(folder)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"{flag} {str(target)!r} is not a folder; give a new folder for the {kind}")
    marker = target / OUTPUT_MARKER
    if target.is_dir() and any(target.iterdir()):
        if not _marked(marker, kind) and not (adopt is not None and adopt(target)):
            raise ConfigError(
                f"{flag} {str(target)!r} holds files losslab did not make for a {kind} (no {OUTPUT_MARKER} marker); "
                f"losslab never writes into such a folder: give a new or empty folder"
            )
        taken = [name for name in outputs if os.path.lexists(target / name)]
        if taken and not overwrite:
            raise ConfigError(
                f"{flag} {str(target)!r} already holds a {kind} ({', '.join(taken[:3])}); pass --overwrite to "
                "replace it, or give a new folder"
            )
    else:
        _check_parent(target, flag, kind)
    check_writable(target)
    if not _marked(marker, kind):
        write_json_atomic(marker, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return target


def _marked(marker: Path, kind: str) -> bool:
    """True when ``marker`` is a regular file whose JSON names ``kind``."""
    if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
        return False
    try:
        return json.loads(marker.read_text()).get("kind") == kind
    except (ValueError, AttributeError, OSError):
        return False


# ---------------------------------------------------------------------------------------------------- reading YAML
#: Largest YAML file (configs, studies, schedules) losslab reads: shipped ones are a few KiB.
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of a YAML document (mappings and sequences).
MAX_YAML_DEPTH = 32
#: Most values (scalars, mappings, sequences) a YAML document may expand to once its aliases are followed.
MAX_YAML_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects) that refuses nesting deeper than :data:`MAX_YAML_DEPTH`
    while composing, before Python's recursion limit is reached."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _YamlLimit(f"nests deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _YamlLimit(Exception):
    pass


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once aliases are expanded (memoized per node: linear time)."""
    key = id(node)
    if key not in sizes:
        sizes[key] = 0  # a recursive alias counts once; the constructor builds it as a shared reference
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        sizes[key] = min(1 + sum(_expanded_size(c, sizes) for c in children), MAX_YAML_NODES + 1)
    return sizes[key]


def read_utf8(path: str | os.PathLike[str], what: str) -> str:
    """The text of ``path`` as UTF-8; a :class:`losslab.errors.LosslabError` naming ``what`` and the file when it is
    binary or in another encoding (instead of a raw ``UnicodeDecodeError``)."""
    from losslab.errors import LosslabError

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LosslabError(
            f"{what} {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start:,}); give a UTF-8 text file"
        ) from None


def load_yaml_file(path: str | os.PathLike[str], what: str = "YAML file") -> Any:
    """Parse a YAML file safely and within bounds; :class:`losslab.errors.ConfigError` naming the file otherwise.

    Refused before or while parsing: a file over :data:`MAX_YAML_BYTES`, a binary (non UTF-8) file, nesting over
    :data:`MAX_YAML_DEPTH`, a document whose anchors/aliases expand to more than :data:`MAX_YAML_NODES` values
    (a "billion laughs" file), invalid YAML, and any tag that would build a Python object.
    """

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {str(file)!r} does not exist or is not a file; pass the path of a YAML file")
    size = file.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{what} {str(file)!r} is {size:,} bytes; losslab reads YAML files of at most {MAX_YAML_BYTES:,} bytes "
            "(a config or study is a few KiB): pass the right file"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(file)!r} is not a text file (not UTF-8); pass a YAML file") from None
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise _YamlLimit(f"expands to more than {MAX_YAML_NODES:,} values through its anchors and aliases")
        return loader.construct_document(node)
    except _YamlLimit as exc:
        raise ConfigError(f"{what} {str(file)!r} {exc}; losslab refuses it: write the values out plainly") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{what} {str(file)!r} is not valid YAML ({detail}); fix the file's syntax") from None
    finally:
        loader.dispose()


def check_output(path: Path | None, *, overwrite: bool, what: str, flag: str, folder: bool = False) -> None:
    """Fail before any work if ``path`` cannot be written: a file goes through :func:`claim_output` (new, or
    replaced with ``--overwrite``); a folder may exist but must be a writable folder."""

    if path is None:
        return
    if not folder:
        claim_output(path, overwrite=overwrite, what=what, flag=flag)
        return
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a file; give a folder for the {what}")
    _check_parent(path, flag, what)
