"""Report section "Landscape vs compression": which loss-landscape probe predicts the accuracy drop.

For each probe (top eigenvalue, trace, sharpness, weight kurtosis, ...; read from each run's ``landscape.json``)
and each compression point (method, bits), over the trained models of the study:

- Kendall's τ-b between the probe value and the top-1 drop, with a 95 % percentile-bootstrap interval (2,000
  resamples of the models, seed 0);
- Jiang et al.'s (ICLR 2020) granulated τ: for each varied training option, τ over the models that differ only in
  that option (every other option, the seed included, held fixed), averaged over the fixed combinations; then
  averaged over the options (Ψ);
- a scatter per probe, one panel per (method, bits), one colour per training variant;
- one table ranking the probes by their mean τ over the compression points, and a plain statement when no probe's
  interval excludes zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from losslab.report.tables import StudyResults

#: (column name, how to read it from a landscape.json)
PROBE_VALUES: tuple[tuple[str, Any], ...] = (
    ("top eigenvalue", lambda r: (r.get("eigenvalues") or [None])[0]),
    ("trace", lambda r: r.get("trace")),
    ("sharpness (average)", lambda r: r.get("sharpness", {}).get("average")),
    ("sharpness (worst)", lambda r: r.get("sharpness", {}).get("worst")),
    ("adaptive sharpness (average)", lambda r: r.get("sharpness", {}).get("average_adaptive")),
    ("adaptive sharpness (worst)", lambda r: r.get("sharpness", {}).get("worst_adaptive")),
    ("weight kurtosis", lambda r: r.get("weights", {}).get("weights/kurtosis_mean")),
    ("max|w|/std", lambda r: r.get("weights", {}).get("weights/max_over_std_mean")),
)

__all__ = ["bootstrap_tau", "granulated_tau", "kendall_tau", "landscape_rows", "read_landscapes"]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b: (concordant − discordant) / √((n₀ − ties_x)(n₀ − ties_y)); NaN when either is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(a), k=1)
    sx, sy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    nx, ny = np.count_nonzero(sx), np.count_nonzero(sy)
    return float((sx * sy).sum() / math.sqrt(nx * ny)) if nx and ny else float("nan")


def bootstrap_tau(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of τ-b, resampling the (x, y) pairs with replacement."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    taus = [kendall_tau(a[idx], b[idx]) for idx in rng.integers(0, len(a), size=(resamples, len(a)))]
    taus = [t for t in taus if not math.isnan(t)]
    if not taus:
        return float("nan"), float("nan")
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))


def granulated_tau(options: list[dict[str, Any]], x: Sequence[float], y: Sequence[float]) -> float:
    """Jiang et al.'s Ψ: the mean over options k of the mean τ over groups of models equal in every option but k.

    ``options[m]`` are the varied options of model m (the seed included); groups with fewer than two distinct
    values of k, or a NaN τ, are skipped. NaN when no option has such a group.
    """
    per_option = []
    for k in {key for o in options for key in o} - {"seed"}:
        groups: dict[str, list[int]] = {}
        for m, o in enumerate(options):
            groups.setdefault(
                json.dumps({q: v for q, v in o.items() if q != k}, sort_keys=True, default=str), []
            ).append(m)
        taus = []
        for members in groups.values():
            if len({json.dumps(options[m].get(k), default=str) for m in members}) < 2:
                continue
            t = kendall_tau([x[m] for m in members], [y[m] for m in members])
            if not math.isnan(t):
                taus.append(t)
        if taus:
            per_option.append(sum(taus) / len(taus))
    return sum(per_option) / len(per_option) if per_option else float("nan")


def read_landscapes(results: StudyResults, study_dir: Path) -> dict[str, dict[str, Any]]:
    """train key → the run's landscape.json (runs without one, or with a stored error, left out)."""
    out = {}
    for run in results.runs:
        if not run.get("run_dir"):
            continue
        path = Path(run["run_dir"])
        path = (path if path.is_absolute() else study_dir / path) / "landscape.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "error" not in data:
            out[run["key"]] = data
    return out


def landscape_rows(results: StudyResults, landscapes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (probe, method, bits): n models, τ, its 95 % interval and the granulated τ."""
    runs = {r["key"]: r for r in results.runs if r["key"] in landscapes}
    rows = []
    for name, read in PROBE_VALUES:
        for label, bits in dict.fromkeys((c["label"], c["bits"]) for c in results.compressions):
            pairs = [
                (read(landscapes[c["train_key"]]), c["drop_top1"], c["train_key"])
                for c in results.compressions
                if c["label"] == label and c["bits"] == bits and c["train_key"] in runs
            ]
            pairs = [p for p in pairs if p[0] is not None and p[1] is not None and math.isfinite(p[0])]
            if len(pairs) < 3:
                continue
            x, y = [p[0] for p in pairs], [p[1] for p in pairs]
            options = [{k: runs[p[2]]["config"].get(k) for k in [*results.varied, "seed"]} for p in pairs]
            low, high = bootstrap_tau(x, y)
            rows.append(
                {
                    "probe": name,
                    "method": label,
                    "bits": bits,
                    "n": len(pairs),
                    "tau": kendall_tau(x, y),
                    "tau_low": low,
                    "tau_high": high,
                    "granulated_tau": granulated_tau(options, x, y),
                    "x": x,
                    "y": y,
                    "variants": [runs[p[2]]["variant"] for p in pairs],
                }
            )
    return rows


def ranking(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probes ordered by |mean τ| over the compression points, with how many intervals exclude 0 on each side."""
    by_probe: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_probe.setdefault(r["probe"], []).append(r)
    out = []
    for probe, rs in by_probe.items():
        taus = [r["tau"] for r in rs if not math.isnan(r["tau"])]
        psis = [r["granulated_tau"] for r in rs if not math.isnan(r["granulated_tau"])]
        out.append(
            {
                "probe": probe,
                "mean_tau": sum(taus) / len(taus) if taus else float("nan"),
                "mean_granulated_tau": sum(psis) / len(psis) if psis else float("nan"),
                "positive": sum(1 for r in rs if r["tau_low"] > 0),
                "negative": sum(1 for r in rs if r["tau_high"] < 0),
                "points": len(rs),
            }
        )
    return sorted(out, key=lambda r: -abs(r["mean_tau"]) if not math.isnan(r["mean_tau"]) else 0.0)


def predicts(r: dict[str, Any]) -> bool:
    """A probe predicts the drop when its intervals exclude 0 at half the points or more, all on one side."""
    return (r["positive"] == 0 or r["negative"] == 0) and 2 * (r["positive"] + r["negative"]) >= r["points"]


def verdict(ranked: list[dict[str, Any]]) -> str:
    """The plain statement of the section, with the number of intervals expected to exclude 0 by chance."""
    total = sum(r["points"] for r in ranked)
    excluding = sum(r["positive"] + r["negative"] for r in ranked)
    chance = f"{excluding} of {total} intervals exclude 0, where about {0.05 * total:.0f} would by chance"
    good = [r for r in ranked if predicts(r)]
    if not good:
        return (
            f"No probe predicts the accuracy drop: {chance}, and no probe's intervals exclude 0 at half its "
            "(method, bits) points or more with one sign."
        )
    names = ", ".join(
        f"{r['probe']} ({'+' if r['positive'] else '-'}, {r['positive'] + r['negative']}/{r['points']} points)"
        for r in good
    )
    return f"Probes whose τ interval excludes 0 at half the points or more, with one sign: {names} ({chance})."


#: Marker cycle of the scatter: with tab10's ten colours, 60 variants get distinct (colour, marker) pairs.
MARKERS = ("o", "s", "^", "D", "v", "P")
#: An all-positive probe spanning at least this ratio (max/min) is drawn on a log axis.
LOG_SPAN = 30.0


def variant_styles(variants: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A distinct (colour, marker) per variant: tab10's colours, then the next marker after ten variants."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {v: (cmap(i % 10), MARKERS[(i // 10) % len(MARKERS)]) for i, v in enumerate(variants)}


def draw_scatter(rows: list[dict[str, Any]], probe: str) -> Any:
    """The figure of :func:`scatter` (None when the probe has no rows): probe value against the top-1 drop, a panel
    per (method, bits) titled with τ and its interval, a dashed line at no drop, a log x axis when the probe is
    positive and spans ≥ ``LOG_SPAN``×, one (colour, marker) per training variant and one legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [r for r in rows if r["probe"] == probe]
    if not panels:
        return None
    variants = list(dict.fromkeys(v for r in panels for v in r["variants"]))
    styles = variant_styles(variants)
    xs = [x for r in panels for x in r["x"]]
    log_x = min(xs) > 0 and max(xs) >= LOG_SPAN * min(xs)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = math.ceil(len(variants) / 3)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.8 * ncols, 2.9 * nrows + 0.22 * legend_rows),
        squeeze=False,
        layout="constrained",
    )
    handles: dict[str, Any] = {}
    for ax, r in zip(axes.flat, panels):
        ax.axhline(0.0, color="0.6", lw=0.8, ls="--", zorder=0)
        for v in variants:
            pts = [(x, y) for x, y, w in zip(r["x"], r["y"], r["variants"]) if w == v]
            if pts:
                colour, marker = styles[v]
                handles[v] = ax.scatter(*zip(*pts), s=16, color=colour, marker=marker, label=v)
        if log_x:
            ax.set_xscale("log")
        else:  # few ticks, small values as ×10^k: labels like -0.0015 would run into each other
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.set_title(
            f"{r['method']} {r['bits']}-bit: τ {r['tau']:+.2f} [{r['tau_low']:+.2f}, {r['tau_high']:+.2f}]", fontsize=9
        )
        ax.set_xlabel(probe + (" (log)" if log_x else ""), fontsize=9)
        ax.set_ylabel("top-1 drop (points)", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.legend(
        [handles[v] for v in variants if v in handles],
        [v for v in variants if v in handles],
        loc="outside lower center",
        ncol=min(3, len(variants)),
        fontsize=7,
        frameon=False,
    )
    return fig


def scatter(rows: list[dict[str, Any]], probe: str, path: Path) -> Path | None:
    """Write :func:`draw_scatter`'s figure to ``path`` (PNG, atomically); None when the probe has no rows."""
    import matplotlib.pyplot as plt

    from losslab.io import atomic_path

    fig = draw_scatter(rows, probe)
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
