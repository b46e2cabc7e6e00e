"""The budget Pareto figure: accuracy (or perplexity) against stored bits per weight.

Uniform widths are points, the budgeted allocations one curve per series (a training variant in a study, or the
single run of ``losslab quantize --budget``), the float model a horizontal line::

    pareto_figure({"small_cnn": curve}, {"small_cnn": uniform}, {"small_cnn": 97.2}, "budget.png")

``curve``/``uniform`` are lists of ``(stored bits per weight, metric)``, uniform ones optionally with a label
(``"3-bit"``) as a third element. It lives in ``compress`` (drawn by ``quantize --budget``); the study report's
frontier (:func:`losslab.report.budget.budget_frontier`) draws through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from losslab.io import atomic_path

__all__ = ["Point", "pareto_figure"]

Point = tuple[float, float]


def pareto_figure(
    budgeted: Mapping[str, Sequence[Point]],
    uniform: Mapping[str, Sequence[tuple[float, float, str]]],
    float_metric: Mapping[str, float],
    path: str | Path,
    *,
    metric: str = "test top-1 (%)",
    title: str = "accuracy vs storage: budgeted widths against uniform widths",
) -> Path:
    """Draw the figure to ``path`` (PNG, written atomically) and return the path."""
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(budgeted):
        colour = colours[k % len(colours)]
        curve = sorted(budgeted[name])
        if curve:
            ax.plot(*zip(*curve), "-o", color=colour, label=f"{name}: budgeted")
        points = sorted(uniform.get(name, ()))
        if points:
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "s",
                color=colour,
                mfc="none",
                ms=8,
                label=f"{name}: uniform widths",
            )
            for x, y, label in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8, color=colour)
        if name in float_metric:
            ax.axhline(float_metric[name], color=colour, ls=":", lw=1, label=f"{name}: float")
    xs = [p[0] for c in budgeted.values() for p in c] + [p[0] for u in uniform.values() for p in u]
    if xs:
        ax.set_xlim(min(xs) - 0.3, max(xs) + 0.7)  # room for the width labels
    low, high = ax.get_ylim()
    ax.set_ylim(low - 0.06 * (high - low), high)
    ax.set_xlabel("stored bits per weight (codes + scales + zero points)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the data
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
