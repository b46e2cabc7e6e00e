"""Report figures (matplotlib, Agg backend, PNG): each function draws one figure and returns its path.

::

    from losslab.report.figures import accuracy_vs_bits
    accuracy_vs_bits(results, "report/figures/accuracy_vs_bits.png")

Figures: test top-1 vs the bits each weight really costs (codes + scales; b-bit GPFQ stores b + 1) per training
variant (mean ± std over seeds), accuracy-drop heatmaps (a training option, by default the learning rate, × bits,
one figure per method, one colour scale shared by every method), weight histograms before and after
quantization per layer, training curves grouped by each varied option, and logit statistics per epoch. A
figure whose data the study does not hold (e.g. no logit statistics) is skipped (the function returns None).

Readability rules: figures are laid out for a page about 8 inches wide (at most 2-3 panels a row, 10-11 pt
text); the first varied option (the loss when it varies) is told by colour and the second (the learning rate
when it varies) by line style; ±std bands are clipped to the metric's valid range (accuracy in [0, 100], losses
and CE >= 0) and say what they pool.
"""

from __future__ import annotations

import math
import statistics
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
    ("train/loss", "training loss (own objective)"),
    ("val/acc", "val top-1 (%)"),
    ("val/ce", "val cross entropy (nats)"),
)
# The valid range of each metric (None: unbounded); std bands and error bars are clipped to it.
ACCURACY_RANGE = (0.0, 100.0)
NON_NEGATIVE = (0.0, None)
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "train/loss": NON_NEGATIVE,
    "val/acc": ACCURACY_RANGE,
    "val/ce": NON_NEGATIVE,
}
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FONT = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 12}
LOGIT_STATS = (
    ("norm", "mean logit L2 norm"),
    ("mean", "mean |logit mean|"),
    ("max", "mean |logit max|"),
    ("var", "mean logit variance"),
)


def clipped_errors(means: Sequence[float], stds: Sequence[float], low: float, high: float) -> list[list[float]]:
    """Asymmetric error bars [[below...], [above...]] of mean ± std cut at the metric's range [low, high] (never
    negative, for a mean estimated just outside the range)."""
    below = [max(0.0, min(s, m - low)) for m, s in zip(means, stds)]
    return [below, [max(0.0, min(s, high - m)) for m, s in zip(means, stds)]]


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


def _legend(fig: Figure, axes: list[Any], used: int, title: str) -> None:
    """The first panel's legend in the first unused grid cell, else below the panels."""
    handles, labels = axes[0].get_legend_handles_labels()
    if len(axes) > used:
        cell = axes[used]
        cell.set_visible(True)
        cell.axis("off")
        cell.legend(handles, labels, loc="center", title=title, frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), title=title, frameon=False)


def style_options(results: StudyResults) -> tuple[str | None, str | None]:
    """(option told by colour, option told by line style): the loss and the learning rate when they vary."""
    varied = list(results.varied)
    colour = "loss" if "loss" in varied else (varied[0] if varied else None)
    rest = [k for k in varied if k != colour]
    style = "lr" if "lr" in rest else (rest[0] if rest else None)
    return colour, style


def variant_styles(results: StudyResults) -> dict[str, dict[str, Any]]:
    """Matplotlib line style per training variant: colour from one option, dash pattern from another."""
    colour_key, style_key = style_options(results)
    configs = {r["variant"]: r["config"] for r in results.runs}

    def values(key: str | None) -> list[str]:
        return list(dict.fromkeys(format_value(c.get(key)) for c in configs.values())) if key else [""]

    colours = dict(zip(values(colour_key), _colors(len(values(colour_key)))))
    styles = {v: LINE_STYLES[i % len(LINE_STYLES)] for i, v in enumerate(values(style_key))}
    markers = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(values(style_key))}
    out = {}
    for variant, config in configs.items():
        c = format_value(config.get(colour_key)) if colour_key else ""
        st = format_value(config.get(style_key)) if style_key else ""
        out[variant] = {"color": colours[c], "linestyle": styles[st], "marker": markers[st]}
    return out


def clip_band(
    mean: Sequence[float], std: Sequence[float], valid: tuple[float | None, float | None]
) -> tuple[list[float], list[float]]:
    """(lower, upper) of mean ± std, each clipped to the metric's valid range ``valid`` = (low, high)."""
    low, high = valid
    lower = [m - s if low is None else max(low, m - s) for m, s in zip(mean, std)]
    upper = [m + s if high is None else min(high, m + s) for m, s in zip(mean, std)]
    return lower, upper


def real_bits(results: StudyResults, method: str, bits: int) -> float:
    """Mean stored bits per weight (codes + scales/zero points) of ``method`` at ``bits``, from the summaries."""
    stored = [
        r["summary"]["avg_bits_per_weight"]
        for r in results.compressions
        if r["label"] == method and r["bits"] == bits and (r.get("summary") or {}).get("avg_bits_per_weight")
    ]
    return statistics.fmean(stored) if stored else float(bits)


def accuracy_vs_bits(results: StudyResults, path: str | Path) -> Path | None:
    """Test top-1 (%) vs stored bits per weight, one panel per method, one line per training variant.

    The x position is what a weight really costs (``avg_bits_per_weight`` of the compression summary: codes plus
    scales, so b-bit GPFQ sits at about b + 1); ticks name the nominal bit width. The float model is the last
    point. Error bars: ± 1 std over seeds, clipped to [0, 100].
    """
    methods = results.methods()
    if not methods:
        return None
    seeds = sorted({r["seed"] for r in results.runs})
    styles = variant_styles(results)
    with plt.rc_context(FONT):
        ncols = 2 if len(methods) in (2, 3, 4) else min(3, len(methods))
        fig, axes = _grid(len(methods) + (len(methods) % 2 if ncols == 2 else 0), ncols, (4.0, 3.2), sharey=True)
        all_bits = [real_bits(results, m, b) for m in methods for b in {r["bits"] for r in results.compressions}]
        float_x = math.floor(max(all_bits)) + 1.5
        for ax, method in zip(axes, methods):
            bits = sorted({r["bits"] for r in results.compressions if r["label"] == method})
            xs = [real_bits(results, method, b) for b in bits] + [float_x]
            for variant in results.variants:
                rows = [r for r in results.compressions if r["label"] == method and r["variant"] == variant]
                stats = [mean_std(r["top1"] for r in rows if r["bits"] == b) for b in bits]
                stats.append(mean_std(r["float_top1"] for r in results.runs if r["variant"] == variant))
                ys = [st[0] for st in stats]
                lower, upper = clip_band(ys, [st[1] for st in stats], ACCURACY_RANGE)
                yerr = [[y - lo for y, lo in zip(ys, lower)], [up - y for y, up in zip(ys, upper)]]
                ax.errorbar(xs, ys, yerr=yerr, ms=4, capsize=2, linewidth=1.4, label=variant, **styles[variant])
            ticks = list(range(math.floor(min(all_bits)), math.floor(max(all_bits)) + 1))
            ax.set_xticks([*ticks, float_x], [*map(str, ticks), "float"])
            ax.set_xlim(min(all_bits) - 0.5, float_x + 0.5)
            ax.axvline(float_x - 0.75, color="0.6", linewidth=0.8)
            for b, x in zip(bits, xs):
                ax.annotate(
                    f"{b}b",
                    (x, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    color="0.35",
                )
            ax.set_xlabel("stored bits per weight (codes + scales)")
            ax.set_ylabel("test top-1 (%)")
            ax.yaxis.set_tick_params(labelleft=True)
            ax.set_title(method)
            ax.grid(alpha=0.3)
        _legend(fig, axes, len(methods), "training variant")
        fig.suptitle(
            f"{results.name}: test top-1 vs stored bits per weight\n(mean, error bars ± 1 std over "
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); small labels: nominal bits)"
        )
        return save_figure(fig, path)


def heatmap_option(results: StudyResults) -> str | None:
    """The training option on the heatmap rows: ``lr`` if it varies, else the first varied option."""
    if "lr" in results.varied:
        return "lr"
    return results.varied[0] if results.varied else None


def _drop_tables(
    results: StudyResults, method: str, option: str
) -> tuple[list[str], list[Any], list[int], list[list[list[float]]]]:
    """(panels, option values, bits, per panel a values × bits grid of mean drops) for ``method``."""
    rows = [r for r in results.compressions if r["label"] == method]
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
    cells: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        config = runs[r["train_key"]]["config"]
        cells.setdefault((variant_label(config, others), repr(config.get(option)), r["bits"]), []).append(
            r["drop_top1"]
        )
    tables = [[[mean_std(cells.get((panel, repr(v), b), []))[0] for b in bits] for v in values] for panel in panels]
    return panels, values, bits, tables


def drop_scale(results: StudyResults, option: str) -> float:
    """The largest |mean drop| over every method's heatmap cells (one colour scale for all methods), >= 0.5."""
    finite = [
        abs(v)
        for method in results.methods()
        for grid in _drop_tables(results, method, option)[3]
        for line in grid
        for v in line
        if not math.isnan(v)
    ]
    return max(max(finite, default=1.0), 0.5)


def drop_heatmap(
    results: StudyResults, method: str, path: str | Path, option: str | None = None, vmax: float | None = None
) -> Path | None:
    """Accuracy drop (float − compressed top-1, points; mean over seeds) as ``option`` × bits, for one method.

    One panel per combination of the other varied options; cells are annotated; red = accuracy lost. The colour
    scale is ±``vmax``, by default shared by every method of the study (:func:`drop_scale`), so equal colours
    mean equal drops across the figures.
    """
    option = option or heatmap_option(results)
    if option is None or not any(r["label"] == method for r in results.compressions):
        return None
    panels, values, bits, tables = _drop_tables(results, method, option)
    vmax = vmax if vmax is not None else drop_scale(results, option)
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    others = [k for k in results.varied if k != option]
    with plt.rc_context(FONT):
        fig, axes = _grid(len(panels), 2, (0.75 * len(bits) + 1.6, 0.45 * len(values) + 1.3))
        image = None
        for ax, panel, grid in zip(axes, panels, tables):
            image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
            for i, line in enumerate(grid):
                for j, v in enumerate(line):
                    dark = not math.isnan(v) and abs(v) > 0.6 * vmax
                    text = "-" if math.isnan(v) else f"{v:.1f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=10, color="white" if dark else "black")
            ax.set_xticks(range(len(bits)), [str(b) for b in bits])
            ax.set_yticks(range(len(values)), [format_value(v) for v in values])
            ax.set_xlabel("weight bits")
            ax.set_ylabel(option)
            if others:
                ax.set_title(panel)
        fig.suptitle(f"{results.name}: top-1 drop of {method} (float − compressed, points, mean over seeds)")
        bar = fig.colorbar(image, ax=axes, location="bottom", shrink=0.6, aspect=30)
        bar.set_label(f"accuracy drop (points); one scale for every method, ±{vmax:.1f}")
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
    with plt.rc_context(FONT):
        fig, axes = _grid(len(names), 2, (3.7, 2.6))
        for ax, name in zip(axes, names):
            _hist_fraction(ax, floats[name], fill=True, color="0.7", label="float")
            _hist_fraction(ax, quant[name], color="tab:red", linewidth=1.2, label=quant_label)
            ax.set_yscale("log")
            stats = quant[name].stats
            ax.set_title(f"{name} ({int(stats['distinct'])} distinct values)", fontsize=10)
            ax.set_xlabel("weight value")
            ax.set_ylabel("fraction of weights")
        axes[0].legend()
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
    styles: dict[str, dict[str, Any]] | None = None,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
) -> Path | None:
    """One panel per metric, one line per group (mean over its runs) with a ± std band clipped to the range."""
    present = [(m, label) for m, label in metrics if any(m in row for rows in results.epochs.values() for row in rows)]
    if not present or not groups:
        return None
    styles = styles or {
        name: {"color": c, "linestyle": "-", "marker": "o"} for name, c in zip(groups, _colors(len(groups)))
    }
    ranges = ranges or {}
    with plt.rc_context(FONT):
        n = len(present)
        fig, axes = _grid(n + n % 2, 2, (3.7, 2.9))
        for ax, (metric, label) in zip(axes, present):
            for name, keys in groups.items():
                epochs, mean, std = _curve(results, keys, metric)
                if not epochs:
                    continue
                x = [e + 1 for e in epochs]
                style = styles[name]
                ax.plot(x, mean, ms=3, linewidth=1.4, label=name, **style)
                lower, upper = clip_band(mean, std, ranges.get(metric, (None, None)))
                ax.fill_between(x, lower, upper, color=style["color"], alpha=0.12, linewidth=0)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        _legend(fig, axes, n, legend_title)
        fig.suptitle(title)
        return save_figure(fig, path)


def training_curves(results: StudyResults, option: str, path: str | Path) -> Path | None:
    """Training loss, validation accuracy and CE per epoch; one line per value of ``option`` (mean ± std band
    over every run with that value, clipped to each metric's valid range)."""
    groups: dict[str, list[str]] = {}
    for run in results.runs:
        groups.setdefault(format_value(run["config"].get(option)), []).append(run["key"])
    colour_key, _ = style_options(results)
    if option == colour_key:
        styles = {g: {"color": c, "linestyle": "-", "marker": "o"} for g, c in zip(groups, _colors(len(groups)))}
    else:  # a learning rate (or another second option): told by line style, like in the accuracy figure
        styles = {
            g: {"color": "0.15", "linestyle": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)]}
            for i, g in enumerate(groups)
        }
    sizes = sorted({len(keys) for keys in groups.values()})
    pooled = [k for k in results.varied if k != option] + ["seed"]
    return _curves_figure(
        results,
        groups,
        CURVE_METRICS,
        option,
        f"{results.name}: training curves by {option}\n(mean; band ± 1 std over the "
        f"{'/'.join(map(str, sizes))} runs per line, pooling {', '.join(pooled)})",
        path,
        styles,
        METRIC_RANGES,
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
        f"{results.name}: logit statistics per epoch (mean; band ± 1 std over seeds)",
        path,
        variant_styles(results),
        {m: NON_NEGATIVE for m, _ in metrics},  # norms, absolute values and variances
    )
