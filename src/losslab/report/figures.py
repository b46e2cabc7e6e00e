"""Report figures (matplotlib, Agg backend, PNG): each function draws one figure and returns its path.

::

    from losslab.report.figures import accuracy_vs_bits
    accuracy_vs_bits(results, "report/figures/accuracy_vs_bits.png")

Figures: test top-1 vs bits per training variant (mean ± std over seeds), accuracy-drop heatmaps (a training
option, by default the learning rate, × bits, one figure per method), weight histograms before and after
quantization per layer, training curves grouped by each varied option, and logit statistics per epoch. A
figure whose data the study does not hold (e.g. no logit statistics) is skipped (the function returns None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from losslab.io import atomic_path
from losslab.report.tables import StudyResults, format_value, mean_std, variant_label
from losslab.study.records import WeightHistogram

MAX_HIST_LAYERS = 12
CURVE_METRICS = (
    ("train/loss", "training objective (its own loss)"),
    ("val/acc", "validation top-1 (%)"),
    ("val/ce", "validation cross entropy (nats)"),
)
LOGIT_STATS = (
    ("norm", "mean logit L2 norm"),
    ("mean", "mean |logit mean|"),
    ("max", "mean |logit max|"),
    ("var", "mean logit variance"),
)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG (150 dpi) atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _grid(n: int, ncols: int, size: tuple[float, float], sharey: bool = False) -> tuple[Figure, list[Any]]:
    """``n`` panels of ``size`` inches in rows of ``ncols`` (constrained layout: titles and colorbars fit)."""
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, layout="constrained", sharey=sharey
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def accuracy_vs_bits(results: StudyResults, path: str | Path) -> Path | None:
    """Test top-1 (%) vs weight bits, one panel per method, one line per training variant (mean ± std)."""
    methods = results.methods()
    if not methods:
        return None
    fig, axes = _grid(len(methods), 3, (5.2, 4.0), sharey=True)
    colors = _colors(len(results.variants))
    for ax, method in zip(axes, methods):
        bits = sorted({r["bits"] for r in results.compressions if r["label"] == method})
        xs = list(range(len(bits) + 1))  # the last position is the float model
        for color, variant in zip(colors, results.variants):
            rows = [r for r in results.compressions if r["label"] == method and r["variant"] == variant]
            stats = [mean_std(r["top1"] for r in rows if r["bits"] == b) for b in bits]
            fp = mean_std(r["float_top1"] for r in results.runs if r["variant"] == variant)
            ys = [s[0] for s in stats] + [fp[0]]
            errs = [s[1] for s in stats] + [fp[1]]
            ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", ms=4, capsize=3, label=variant)
        ax.set_xticks(xs, [str(b) for b in bits] + ["float"])
        ax.set_xlabel("weight bits")
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.set_title(f"{method}")
        ax.grid(alpha=0.3)
    seeds = sorted({r["seed"] for r in results.runs})
    fig.suptitle(f"{results.name}: accuracy vs bits (mean ± std over seeds {', '.join(map(str, seeds))})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(4, len(labels)),
        title="training variant",
        frameon=False,
    )
    return save_figure(fig, path)


def heatmap_option(results: StudyResults) -> str | None:
    """The training option on the heatmap rows: ``lr`` if it varies, else the first varied option."""
    if "lr" in results.varied:
        return "lr"
    return results.varied[0] if results.varied else None


def drop_heatmap(results: StudyResults, method: str, path: str | Path, option: str | None = None) -> Path | None:
    """Accuracy drop (float − compressed top-1, points; mean over seeds) as ``option`` × bits, for one method.

    One panel per combination of the other varied options; cells are annotated; red = accuracy lost.
    """
    option = option or heatmap_option(results)
    rows = [r for r in results.compressions if r["label"] == method]
    if option is None or not rows:
        return None
    runs = {r["key"]: r for r in results.runs}
    others = [k for k in results.varied if k != option]
    panels = list(dict.fromkeys(variant_label(runs[r["train_key"]]["config"], others) for r in rows))
    values = sorted(
        {
            repr(runs[r["train_key"]]["config"].get(option)): runs[r["train_key"]]["config"].get(option) for r in rows
        }.values(),
        key=lambda v: (v is None, v if isinstance(v, int | float) else str(v)),
    )
    bits = sorted({r["bits"] for r in rows})
    tables = []
    for panel in panels:
        grid = []
        for value in values:
            line = []
            for b in bits:
                sel = [
                    r["drop_top1"]
                    for r in rows
                    if r["bits"] == b
                    and runs[r["train_key"]]["config"].get(option) == value
                    and variant_label(runs[r["train_key"]]["config"], others) == panel
                ]
                line.append(mean_std(sel)[0])
            grid.append(line)
        tables.append(grid)
    finite = [abs(v) for t in tables for line in t for v in line if not math.isnan(v)]
    vmax = max(max(finite, default=1.0), 0.5)
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    fig, axes = _grid(len(panels), 4, (0.7 * len(bits) + 1.4, 0.5 * len(values) + 1.4))
    image = None
    for ax, panel, grid in zip(axes, panels, tables):
        image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                text = "-" if math.isnan(v) else f"{v:.1f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if not math.isnan(v) and abs(v) > 0.6 * vmax else "black",
                )
        ax.set_xticks(range(len(bits)), [str(b) for b in bits])
        ax.set_yticks(range(len(values)), [format_value(v) for v in values])
        ax.set_xlabel("weight bits")
        ax.set_ylabel(option)
        if others:
            ax.set_title(panel, fontsize=9)
    fig.suptitle(f"{results.name}: top-1 drop of {method}\n(float − compressed, points, mean over seeds)")
    fig.colorbar(image, ax=axes, label="accuracy drop (percentage points)", shrink=0.9)
    return save_figure(fig, path)


def _pick_layers(names: Sequence[str]) -> list[str]:
    if len(names) <= MAX_HIST_LAYERS:
        return list(names)
    step = (len(names) - 1) / (MAX_HIST_LAYERS - 1)
    return [names[round(i * step)] for i in range(MAX_HIST_LAYERS)]


def _hist_fraction(ax: Any, hist: WeightHistogram, **style: Any) -> None:
    total = max(sum(hist.counts), 1)
    ax.stairs([c / total for c in hist.counts], hist.edges, **style)


def weight_histograms(
    float_hists: Sequence[WeightHistogram],
    quant_hists: Sequence[WeightHistogram],
    title: str,
    quant_label: str,
    path: str | Path,
) -> Path | None:
    """Per layer: the float weights' histogram (grey) and the quantized weights' (colour), fraction per bin (log).

    At most :data:`MAX_HIST_LAYERS` layers, evenly spaced through the network, are drawn.
    """
    quant = {h.layer: h for h in quant_hists}
    names = _pick_layers([h.layer for h in float_hists if h.layer in quant])
    if not names:
        return None
    floats = {h.layer: h for h in float_hists}
    fig, axes = _grid(len(names), 4, (3.6, 2.7))
    for ax, name in zip(axes, names):
        _hist_fraction(ax, floats[name], fill=True, color="0.7", label="float")
        _hist_fraction(ax, quant[name], color="tab:red", linewidth=1.2, label=quant_label)
        ax.set_yscale("log")
        stats = quant[name].stats
        ax.set_title(f"{name} ({int(stats['distinct'])} values)", fontsize=8)
        ax.set_xlabel("weight value")
        ax.set_ylabel("fraction of weights")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def _curve(results: StudyResults, keys: Sequence[str], metric: str) -> tuple[list[int], list[float], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for key in keys:
        for row in results.epochs.get(key, []):
            if metric in row:
                by_epoch.setdefault(int(row["epoch"]), []).append(row[metric])
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [s[0] for s in stats], [s[1] for s in stats]


def _curves_figure(
    results: StudyResults,
    groups: dict[str, list[str]],
    metrics: Sequence[tuple[str, str]],
    legend_title: str,
    title: str,
    path: str | Path,
) -> Path | None:
    present = [(m, label) for m, label in metrics if any(m in row for rows in results.epochs.values() for row in rows)]
    if not present or not groups:
        return None
    fig, axes = _grid(len(present), 3, (4.8, 3.6))
    for ax, (metric, label) in zip(axes, present):
        for color, (name, keys) in zip(_colors(len(groups)), groups.items()):
            epochs, mean, std = _curve(results, keys, metric)
            if not epochs:
                continue
            x = [e + 1 for e in epochs]
            ax.plot(x, mean, color=color, marker="o", ms=3, label=name)
            ax.fill_between(
                x,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title=legend_title, fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def training_curves(results: StudyResults, option: str, path: str | Path) -> Path | None:
    """Training loss, validation accuracy and CE per epoch; one line per value of ``option`` (mean ± std band
    over every run with that value)."""
    groups: dict[str, list[str]] = {}
    for run in results.runs:
        groups.setdefault(format_value(run["config"].get(option)), []).append(run["key"])
    return _curves_figure(
        results,
        groups,
        CURVE_METRICS,
        option,
        f"{results.name}: training curves by {option} (mean ± std over runs)",
        path,
    )


def logit_statistics(results: StudyResults, path: str | Path) -> Path | None:
    """Logit statistics per epoch (validation split, else training), one line per training variant."""
    stage = next(
        (
            s
            for s in ("val", "train")
            if any(f"{s}_logits/norm" in row for rows in results.epochs.values() for row in rows)
        ),
        None,
    )
    if stage is None:
        return None
    groups: dict[str, list[str]] = {}
    for run in results.runs:
        groups.setdefault(run["variant"], []).append(run["key"])
    metrics = [(f"{stage}_logits/{k}", f"{label} ({stage})") for k, label in LOGIT_STATS]
    return _curves_figure(
        results,
        groups,
        metrics,
        "training variant",
        f"{results.name}: logit statistics per epoch (mean ± std over seeds)",
        path,
    )
