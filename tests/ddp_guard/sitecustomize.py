"""Loaded by every Python process started with this folder on PYTHONPATH (tests/lm/test_lm_ddp.py,
tests/seq2seq/test_translate_ddp.py): in a ``torchrun`` process other than rank 0, any write under
``LOSSLAB_TEST_NO_WRITES_UNDER`` (open for writing, create, rename, replace, remove, mkdir) raises PermissionError,
so a run in which such a rank writes the run folder fails."""

from __future__ import annotations

import builtins
import io
import os

GUARDED = os.environ.get("LOSSLAB_TEST_NO_WRITES_UNDER")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path: object) -> bool:
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(os.path.realpath(GUARDED))  # type: ignore[arg-type]
    except TypeError:  # a file descriptor
        return False


def _refuse(what: str, path: object) -> None:
    if _inside(path):
        raise PermissionError(f"rank {os.environ['RANK']} tried to {what} {path!r}: only rank 0 writes the run")


def _guard_paths(name: str, count: int) -> None:
    original = getattr(os, name)

    def guarded(*args: object, **kwargs: object) -> object:
        for path in args[:count]:
            _refuse(name, path)
        return original(*args, **kwargs)

    setattr(os, name, guarded)


def _guard_open(module: object, name: str) -> None:
    original = getattr(module, name)

    def guarded(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(flag in mode for flag in "wax+"):
            _refuse(f"open({mode!r})", file)
        return original(file, mode, *args, **kwargs)

    setattr(module, name, guarded)


if GUARDED and os.environ.get("RANK", "0") != "0":
    for _name, _count in (("rename", 2), ("replace", 2), ("remove", 1), ("unlink", 1), ("mkdir", 1), ("rmdir", 1)):
        _guard_paths(_name, _count)
    _open = os.open

    def _os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & WRITE_FLAGS:
            _refuse("os.open for writing", path)
        return _open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    os.open = _os_open  # type: ignore[assignment]
    _guard_open(builtins, "open")
    _guard_open(io, "open")
