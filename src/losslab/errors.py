"""Errors that tell the user what went wrong and how to fix it.

Every error losslab raises for bad input is a :class:`LosslabError` (a ``ValueError``) whose message names the
offending key or value, what is allowed, and what to do. Catch ``LosslabError`` to handle all of them at once;
the CLI prints the message without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class LosslabError(ValueError):
    """Bad input or a missing resource, with a message that says how to fix it."""


class ConfigError(LosslabError):
    """A configuration key or value that is not allowed."""


class DataNotFoundError(LosslabError, FileNotFoundError):
    """A dataset or model that is not on disk and cannot be downloaded."""


class CorruptFileError(LosslabError):
    """A checkpoint, packed model or other data file that is empty, truncated, garbled or fails its checksum."""


class UnsafeFileError(LosslabError):
    """A data file that holds pickled code or objects, which losslab refuses to load (it could run code)."""


class OutputError(LosslabError):
    """An output folder or file that cannot be written (read-only, full, no permission, locked by another run)."""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> LosslabError:
    """Build the error for an unknown registry name, listing the valid choices.

    >>> str(unknown_name_error("objective", "cee", ["ce", "focal"]))
    "unknown objective 'cee'; choose one of: ce, focal"
    """
    return LosslabError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")


def check_range(
    key: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (bounds optional, inclusivity selectable).

    The message names the key, the value and the allowed interval, e.g.
    ``k=-1.0 is out of range: allowed k > 0``.
    """
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if ok:
        return
    parts = []
    if low is not None:
        parts.append(f"{key} {'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        parts.append(f"{key} {'<=' if high_inclusive else '<'} {high:g}")
    raise ConfigError(f"{key}={value!r} is out of range: allowed {' and '.join(parts)}")


class TrainingDivergedError(LosslabError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""
