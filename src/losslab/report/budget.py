"""The study report's budget frontier: per training variant, accuracy against stored bits per weight, drawn by
:func:`losslab.compress.pareto.pareto_figure` (budgeted widths as a curve, uniform widths as points, float as a
line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from losslab.compress.pareto import Point, pareto_figure
from losslab.report.tables import StudyResults, mean_std

__all__ = ["budget_frontier", "pareto_figure"]


def budget_frontier(results: StudyResults, path: str | Path) -> Path | None:
    """The study's frontier per training variant: budgeted top-1 (mean over seeds) against stored bits per
    weight, the same method's uniform widths as points, each variant's float top-1 as a line; None when the
    study has no ``budget:`` entries."""
    if not results.budgets:
        return None
    methods = list(dict.fromkeys(r["method"] for r in results.budgets))
    curves: dict[str, list[Point]] = {}
    points: dict[str, list[tuple[float, float, str]]] = {}
    floats: dict[str, float] = {}
    for variant in results.variants:
        for method in methods:
            name = variant if len(methods) == 1 else f"{variant}, {method}"
            rows = [r for r in results.budgets if r["variant"] == variant and r["method"] == method]
            curves[name] = [_mean_xy(rs) for rs in _by(rows, lambda r: r["options"]["budget"]).values()]
            uniform = [r for r in results.compressions if r["variant"] == variant and r["method"] == method]
            points[name] = [(*_mean_xy(rs), f"{b}-bit") for b, rs in _by(uniform, lambda r: r["bits"]).items()]
            floats[name] = mean_std(r["float_top1"] for r in results.runs if r["variant"] == variant)[0]
    return pareto_figure(
        curves, points, floats, path, title="frontier per training variant: budgeted widths vs uniform widths"
    )


def _by(rows: Sequence[dict], key: object) -> dict[object, list[dict]]:
    out: dict[object, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)  # type: ignore[operator]
    return out


def _mean_xy(rows: Sequence[dict]) -> Point:
    """(mean stored bits per weight, mean top-1) over seeds."""
    return (
        mean_std(r["summary"]["avg_bits_per_weight"] for r in rows)[0],
        mean_std(r["top1"] for r in rows)[0],
    )
