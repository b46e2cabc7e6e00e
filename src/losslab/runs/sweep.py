"""What every sweep shares (``gan sweep``, ``logreg sweep``): the grid, a run folder per cell, the rows and their means.

::

    from losslab.runs import sweep

    cells = sweep.grid({"seed": [0, 1], "loss_k": sweep.loss_axis([2, 8])})   # seed-major, logistic first
    state = sweep.cell_state(run_dir, sweep.identity(cfg_dict, placement), identity_of)  # done / unfinished / new
    sweep.write_rows_csv(rows, out / "sweep.csv")
    table = sweep.aggregate(rows, keys=("loss", "k"), metrics=("hq_rate",))  # mean, std, n over the seeds

A cell that trains for minutes gets its own run folder (:func:`cell_state` says whether a finished one of the
same settings can be reused, an unfinished one resumed, or the cell is new; a folder of that name holding other
settings is refused, never reused or replaced). A sweep of millisecond fits (logreg) keeps one run folder whose
checkpoint holds the rows done so far instead. Only core modules are imported (the runtime's layer rule).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from losslab.errors import ConfigError
from losslab.io import load_yaml_file, write_atomic


def loss_axis(
    ks: Sequence[float], include_logistic: bool = True, rooted: str = "root"
) -> list[tuple[str, float | None]]:
    """(loss, k) per point of the loss axis: the logistic reference first (k None), then ``rooted`` per distinct k
    in the given order."""
    return ([("logistic", None)] if include_logistic else []) + [(rooted, float(k)) for k in dict.fromkeys(ks)]


def grid(axes: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes as a dict (the first axis varies slowest); repeated values of an axis count
    once, in first-seen order."""
    names = list(axes)
    values = [list(dict.fromkeys(axis)) for axis in axes.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def identity(config: Mapping[str, Any], leave_out: Iterable[str] = ()) -> str:
    """16 hex digits of the SHA-256 of ``config`` without the ``leave_out`` keys (JSON, sorted keys): the name of
    a cell's settings, as studies name their points."""
    dropped = set(leave_out)
    kept = {key: value for key, value in config.items() if key not in dropped}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_cell_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a cell's run folder records (``result.json``'s ``config``, else ``config.yaml``); None when there
    is neither; {} when one is there but unreadable (so it matches no identity)."""
    result, config = run_dir / "result.json", run_dir / "config.yaml"
    try:
        if result.is_file():
            stored = json.loads(result.read_text())["config"]
        elif config.is_file():
            stored = load_yaml_file(config, "config.yaml")
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return {}
    return stored if isinstance(stored, dict) else {}


def cell_state(run_dir: Path, want: str, identity_of: Callable[[dict[str, Any]], str | None]) -> str:
    """``done`` (a finished run of identity ``want``: reuse its result.json), ``unfinished`` (its config and a last
    checkpoint: resume), or ``new`` (nothing there, or a run killed before its first checkpoint: train it).

    ``identity_of(stored_config)`` normalises a stored config and names it (None when it is not a valid config).
    A folder whose stored config has another identity is a :class:`ConfigError`.
    """
    stored = stored_cell_config(run_dir)
    if stored is None:
        return "new"
    if not stored or identity_of(stored) != want:
        raise ConfigError(
            f"run folder {str(run_dir)!r} holds a run with other settings (or an unreadable one); move it away "
            "or use another --out-dir"
        )
    if (run_dir / "result.json").is_file():
        return "done"
    return "unfinished" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "new"


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV, written atomically: ``columns`` or the union of the rows' keys in first-seen order; None and
    missing values are empty cells."""
    import csv

    header = list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in header})

    return write_atomic(path, write)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def group_stats(
    rows: Sequence[Mapping[str, Any]], metric: str, keys: Sequence[str]
) -> dict[tuple[Any, ...], tuple[float, float, int]]:
    """(values of ``keys``) → (mean, std, n) of ``metric`` over the rows of that group (first-seen order); rows
    without the metric (missing or None) are left out, and a group with none has no entry."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        if row.get(metric) is not None:
            groups.setdefault(tuple(row[key] for key in keys), []).append(float(row[metric]))
    return {key: (*mean_std(values), len(values)) for key, values in groups.items()}


def aggregate(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[tuple[tuple[Any, ...], dict[str, tuple[float, float, int] | None]]]:
    """The sweep's table: per group of ``keys`` (first-seen order), each metric's (mean, std, n) over the group's
    rows (the seeds), None where no row of the group has it."""
    stats = {metric: group_stats(rows, metric, keys) for metric in metrics}
    groups = dict.fromkeys(tuple(row[key] for key in keys) for row in rows)
    return [(group, {metric: stats[metric].get(group) for metric in metrics}) for group in groups]


__all__ = [
    "aggregate",
    "cell_state",
    "grid",
    "group_stats",
    "identity",
    "loss_axis",
    "mean_std",
    "stored_cell_config",
    "write_rows_csv",
]
