"""Size checks before allocation: a size read from a file, a config or a flag is checked against what is sensible
and what the machine has, before anything is allocated, with one clear error.

    check_count("vocab_size", 50272, high=MAX_VOCAB, source="model.json")      # ConfigError when above
    check_allocation("embedding table", rows * cols * 4, source="model.json")   # ResourceError past free memory
    available_memory()                                                           # bytes of free RAM (or None)

A value near free memory could take the machine down (the kernel kills a process, or another user's), so an
allocation may use at most :data:`MEMORY_FRACTION` of what is free.
"""

from __future__ import annotations

import os

from losslab.errors import ConfigError

#: Token vocabularies above this are an error (the largest public LM vocabularies are about 260k).
MAX_VOCAB = 2_000_000
#: Share of the free memory one allocation may take.
MEMORY_FRACTION = 0.8


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` on Linux, psutil elsewhere), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, AttributeError, OSError):
        return None


def _where(source: str | os.PathLike[str] | None) -> str:
    return f" in {os.fspath(source)!r}" if source is not None else ""


def check_count(
    key: str, value: object, *, low: int = 1, high: int, source: str | os.PathLike[str] | None = None
) -> int:
    """``value`` as an int when it is an integer in [low, high]; else a ConfigError naming ``key`` and ``source``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r}{_where(source)} is not an integer; the file is damaged or not losslab's")
    if not low <= value <= high:
        raise ConfigError(
            f"{key}={value:,}{_where(source)} is out of range: allowed {low:,} <= {key} <= {high:,}; the file "
            "declares a size no model has (damaged or forged), re-create it"
        )
    return value


def check_allocation(what: str, n_bytes: int, *, source: str | os.PathLike[str] | None = None) -> None:
    """ConfigError when ``n_bytes`` for ``what`` exceed :data:`MEMORY_FRACTION` of the available memory."""
    free = available_memory()
    if free is not None and n_bytes > MEMORY_FRACTION * free:
        raise ConfigError(
            f"{what}{_where(source)} needs {n_bytes / 2**30:,.2f} GiB but only {free / 2**30:,.2f} GiB of memory is "
            "available; use a smaller size or a machine with more memory"
        )
