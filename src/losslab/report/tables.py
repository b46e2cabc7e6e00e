"""Tables from a study store: every result, means ± std over seeds, and the accuracy pivot the demo prints.

::

    from losslab.report.tables import load_results, accuracy_pivot, render_text
    results = load_results("study_runs/quickstart")
    header, rows = accuracy_pivot(results)
    print(render_text(header, rows))

A *training variant* is a set of values of the training options that vary across the study's runs, seed
excluded (e.g. ``loss=focal, lr=0.1``); results of the same variant with different seeds are averaged
(mean ± sample std, n = number of seeds). Accuracies are test-split top-1 in percent; drop = float top-1 − compressed
top-1 in points, both measured by the same evaluation pipeline on the same trained model.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab.io import write_atomic
from losslab.study.records import PLACEMENT_KEYS, RUNNER_KEYS
from losslab.study.store import StudyStore
from losslab.tables import format_table

IGNORED_OPTIONS = RUNNER_KEYS | PLACEMENT_KEYS | {"seed"}


@dataclass
class StudyResults:
    """Everything a report needs from one study store, with each run labelled by its training variant."""

    name: str
    description: str
    runs: list[dict[str, Any]]
    compressions: list[dict[str, Any]]
    epochs: dict[str, list[dict[str, Any]]]
    varied: list[str]
    variants: list[str]
    provenance: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)  # budgeted compressions (options["budget"])

    def methods(self) -> list[str]:
        """Compression labels in the order first stored."""
        return list(dict.fromkeys(c["label"] for c in self.compressions))

    def bits(self) -> list[int]:
        """Bit widths present, high to low."""
        return sorted({c["bits"] for c in self.compressions}, reverse=True)


def format_value(value: Any) -> str:
    """A compact label for an option value (``0.001`` → ``0.001``, ``None`` → ``none``, paths by name)."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).stem
    return str(value)


def variant_label(config: dict[str, Any], varied: Sequence[str]) -> str:
    """``"loss=focal, lr=0.1"`` for the varied options of ``config`` (``"all runs"`` when nothing varies)."""
    return ", ".join(f"{k}={format_value(config.get(k))}" for k in varied) or "all runs"


def load_results(source: StudyStore | str | Path) -> StudyResults:
    """Read a study (an open store, a study folder or its ``study.db``) into a :class:`StudyResults`."""
    if isinstance(source, StudyStore):
        return _collect(source)
    with StudyStore.open(source) as store:
        return _collect(store)


def _collect(store: StudyStore) -> StudyResults:
    runs = store.train_runs()
    configs = [r["config"] for r in runs]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varied = [k for k in keys if k not in IGNORED_OPTIONS and len({repr(c.get(k)) for c in configs}) > 1]
    by_key = {}
    for run in runs:
        run["variant"] = variant_label(run["config"], varied)
        run["seed"] = run["config"].get("seed")
        by_key[run["key"]] = run
    compressions = store.compressions()
    for row in compressions:
        run = by_key[row["train_key"]]
        row["variant"], row["seed"], row["float_top1"] = run["variant"], run["seed"], run["float_top1"]
    budgets = [r for r in compressions if "budget" in (r["options"] or {})]
    compressions = [r for r in compressions if "budget" not in (r["options"] or {})]
    specs = store.specs()
    last = specs[-1] if specs else {"name": store.path.parent.name, "spec": {}}
    provenance = [
        {"started_at": s["started_at"], "losslab_version": s["losslab_version"], "git_commit": s["git_commit"]}
        for s in specs
    ]
    return StudyResults(
        name=last["name"],
        description=last["spec"].get("description", ""),
        runs=runs,
        compressions=compressions,
        epochs=store.epochs(),
        varied=varied,
        variants=list(dict.fromkeys(r["variant"] for r in runs)),
        provenance=provenance,
        failures=store.failures(),
        budgets=budgets,
    )


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n) of the non-missing values; (nan, nan, 0) if none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def _pm(stats: tuple[float, float, int]) -> str:
    mean, std, n = stats
    if n == 0:
        return "-"
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def summary_rows(results: StudyResults) -> list[dict[str, Any]]:
    """One row per (variant, method, bits): mean/std over seeds of float top-1, compressed top-1 and drop."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in results.compressions:
        groups.setdefault((row["variant"], row["label"], row["bits"]), []).append(row)
    options = {r["variant"]: {k: r["config"].get(k) for k in results.varied} for r in results.runs}
    out = []
    for (variant, label, bits), rows in groups.items():
        fp, q, drop = (mean_std(r[k] for r in rows) for k in ("float_top1", "top1", "drop_top1"))
        out.append(
            {
                "variant": variant,
                **options[variant],
                "method": label,
                "bits": bits,
                "n_seeds": q[2],
                "float_top1_mean": fp[0],
                "float_top1_std": fp[1],
                "top1_mean": q[0],
                "top1_std": q[1],
                "drop_mean": drop[0],
                "drop_std": drop[1],
            }
        )
    order = {v: i for i, v in enumerate(results.variants)}
    methods = {m: i for i, m in enumerate(results.methods())}
    return sorted(out, key=lambda r: (order[r["variant"]], methods[r["method"]], -r["bits"]))


def accuracy_pivot(results: StudyResults) -> tuple[list[str], list[list[str]]]:
    """Rows variant × method; columns seeds, float top-1 and top-1 at each bit width (mean ± std, percent)."""
    bits = results.bits()
    header = ["training variant", "method", "seeds", "float top-1 %", *(f"{b}-bit top-1 %" for b in bits)]
    cells: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for row in results.compressions:
        cells.setdefault((row["variant"], row["label"]), {}).setdefault(row["bits"], []).append(row)
    order = {v: i for i, v in enumerate(results.variants)}
    methods = {m: i for i, m in enumerate(results.methods())}
    rows = []
    for (variant, label), by_bits in sorted(cells.items(), key=lambda kv: (order[kv[0][0]], methods[kv[0][1]])):
        runs = [r for r in results.runs if r["variant"] == variant]
        rows.append(
            [
                variant,
                label,
                str(len(runs)),
                _pm(mean_std(r["float_top1"] for r in runs)),
                *(_pm(mean_std(r["top1"] for r in by_bits.get(b, []))) for b in bits),
            ]
        )
    return header, rows


def render_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (first two left-aligned, the rest right-aligned)."""
    return format_table(header, rows, align="ll" + "r" * (len(header) - 2))


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (first two columns left-aligned, the rest right-aligned)."""
    return format_table(header, rows, markdown=True, align="ll" + "r" * (len(header) - 2))


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write dict rows as CSV (columns: union of keys in first-seen order), atomically."""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def writer(fh: Any) -> None:
        out = csv.DictWriter(fh, fieldnames=columns)
        out.writeheader()
        out.writerows(rows)

    return write_atomic(path, writer)
