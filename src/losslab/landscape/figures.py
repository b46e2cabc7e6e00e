"""Figures of a landscape result: SLQ spectral density, 1-D loss line and 2-D loss contour (PNG, atomic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from losslab.io import atomic_path

__all__ = ["save_figures"]


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def save_figures(result: dict[str, Any], folder: Path, title: str = "") -> list[Path]:
    """Draw what ``result`` holds into ``folder``: density.png, surface_line.png, surface_plane.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "density" in result:
        d = result["density"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.semilogy(d["grid"], [max(v, 1e-12) for v in d["density"]])
        ax.set(xlabel="eigenvalue", ylabel="density (log)", title=f"Hessian spectral density (SLQ) {title}".strip())
        written.append(_save(fig, folder / "density.png"))
        plt.close(fig)
    if "surface" in result:
        line, plane = result["surface"]["line"], result["surface"]["plane"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(line["alpha"], line["loss"], marker=".")
        ax.set(xlabel="step along a filter-normalized direction", ylabel="loss", title=f"loss line {title}".strip())
        written.append(_save(fig, folder / "surface_line.png"))
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(4.6, 4))
        cs = ax.contour(plane["alpha"], plane["beta"], plane["loss"], levels=15)
        ax.clabel(cs, fontsize=7)
        ax.plot([0], [0], "k+")
        ax.set(xlabel="direction 1", ylabel="direction 2", title=f"loss contour {title}".strip())
        written.append(_save(fig, folder / "surface_plane.png"))
        plt.close(fig)
    return written
