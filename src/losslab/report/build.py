"""Build a study's report: Markdown and self-contained HTML with PNG figures, plus every table as CSV.

::

    from losslab.report import build_report
    html = build_report("study_runs/quickstart")      # -> study_runs/quickstart/report/report.html

Output folder (default ``STUDY_DIR/report``): ``report.md`` (figures linked), ``report.html`` (figures embedded
as base64 PNG), ``figures/*.png``, and ``results.csv`` (one row per compressed model), ``summary.csv`` (mean ± std
over seeds), ``runs.csv`` (one row per trained model), ``layers.csv`` (per-layer errors), ``methods.csv``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losslab.errors import LosslabError
from losslab.io import claim_output_dir, write_text_atomic
from losslab.report import figures
from losslab.report.budget import budget_frontier
from losslab.report.tables import (
    StudyResults,
    accuracy_pivot,
    load_results,
    mean_std,
    render_markdown,
    summary_rows,
    write_csv,
)
from losslab.study.store import StudyStore


@dataclass
class Heading:
    """A section heading."""

    text: str
    level: int = 2


@dataclass
class Paragraph:
    """A paragraph of plain text (Markdown and HTML escape it as needed)."""

    text: str


@dataclass
class Table:
    """A table with its CSV file (relative to the report folder)."""

    header: list[str]
    rows: list[list[str]]
    csv: str | None = None


@dataclass
class FigureBlock:
    """A PNG figure (path relative to the report folder) with a caption."""

    path: str
    caption: str


Block = Heading | Paragraph | Table | FigureBlock


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _method_rows(results: StudyResults) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Per method and bit width: bits/weight, mean SQNR, quantization and evaluation seconds (mean over runs)."""
    header = [
        "method",
        "bits",
        "models",
        "bits/weight (incl. scales)",
        "mean layer SQNR (dB)",
        "quantize s",
        "evaluate s",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in results.compressions:
        groups.setdefault((row["label"], row["bits"]), []).append(row)
    order = {m: i for i, m in enumerate(results.methods())}
    rows, csv_rows = [], []
    for (label, bits), sel in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -kv[0][1])):
        bpw = mean_std((r["summary"] or {}).get("avg_bits_per_weight") for r in sel)[0]
        sqnr = mean_std((r["summary"] or {}).get("mean_sqnr_db") for r in sel)[0]
        qs, es = mean_std(r["quant_time_s"] for r in sel)[0], mean_std(r["eval_time_s"] for r in sel)[0]
        rows.append([label, str(bits), str(len(sel)), _fmt(bpw, ".3f"), _fmt(sqnr), _fmt(qs), _fmt(es)])
        csv_rows.append(
            {
                "method": label,
                "bits": bits,
                "models": len(sel),
                "avg_bits_per_weight": bpw,
                "mean_sqnr_db": sqnr,
                "quant_time_s": qs,
                "eval_time_s": es,
            }
        )
    return header, rows, csv_rows


def _flat(row: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in drop}


def _write_csvs(results: StudyResults, store: StudyStore, out: Path) -> list[dict[str, Any]]:
    summary = summary_rows(results)
    write_csv(out / "summary.csv", summary)
    write_csv(
        out / "results.csv",
        [
            {
                **_flat(r, ("summary", "options", "setting")),
                "options": r["options"],
                "avg_bits_per_weight": (r["summary"] or {}).get("avg_bits_per_weight"),
            }
            for r in [*results.compressions, *results.budgets]
        ],
    )
    write_csv(
        out / "runs.csv",
        [{**_flat(r, ("config",)), **{f"config.{k}": v for k, v in r["config"].items()}} for r in results.runs],
    )
    labels = {r["key"]: r for r in [*results.compressions, *results.budgets]}
    write_csv(
        out / "layers.csv",
        [
            {
                "variant": labels[row["compression_key"]]["variant"],
                "seed": labels[row["compression_key"]]["seed"],
                "method": labels[row["compression_key"]]["label"],
                "bits_setting": labels[row["compression_key"]]["bits"],
                **row,
            }
            for row in store.layer_errors()
            if row["compression_key"] in labels  # a job of a running study stores its layers first
        ],
    )
    return summary


def _histogram_figures(results: StudyResults, store: StudyStore, fig_dir: Path) -> list[FigureBlock]:
    """For each method: the first run's layers, float vs quantized at the method's lowest bit width."""
    blocks = []
    for i, method in enumerate(results.methods()):
        rows = [r for r in results.compressions if r["label"] == method]
        run = next(r for r in results.runs if any(c["train_key"] == r["key"] for c in rows))
        chosen = min((c for c in rows if c["train_key"] == run["key"]), key=lambda c: c["bits"])
        title = (
            f"{results.name}: weights of '{run['variant']}' (seed {run['seed']}), float vs {method} "
            f"{chosen['bits']}-bit"
        )
        path = figures.weight_histograms(
            store.weight_histograms(run["key"]),
            store.weight_histograms(chosen["key"]),
            title,
            f"{method} {chosen['bits']}-bit",
            fig_dir / f"weights_{i}.png",
        )
        if path is not None:
            blocks.append(
                FigureBlock(
                    f"figures/{path.name}",
                    title + " (fraction of weights per bin, log scale; at "
                    f"most {figures.MAX_HIST_LAYERS} layers, evenly spaced).",
                )
            )
    return blocks


def _blocks(results: StudyResults, store: StudyStore, out: Path) -> list[Block]:
    fig_dir = out / "figures"
    blocks: list[Block] = [Heading(f"Study report: {results.name}", 1)]
    if results.description:
        blocks.append(Paragraph(results.description.strip()))
    seeds = sorted({r["seed"] for r in results.runs})
    blocks.append(
        Paragraph(
            f"{len(results.runs)} trained models, {len(results.compressions)} compressed models. "
            f"Varied training options: {', '.join(results.varied) or 'none'}; seeds {', '.join(map(str, seeds))}. "
            "Accuracy is test-split top-1 in percent (mean ± sample std over seeds); compression is weight-only "
            "fake quantization (dequantized floats written back); drop = float − compressed top-1 in points, "
            "same evaluation pipeline."
        )
    )
    summary = _write_csvs(results, store, out)
    header, rows = accuracy_pivot(results)
    blocks += [Heading("Accuracy by training variant and bit width"), Table(header, rows, "summary.csv")]
    path = figures.accuracy_vs_bits(results, fig_dir / "accuracy_vs_bits.png")
    if path is not None:
        blocks.append(
            FigureBlock(
                "figures/accuracy_vs_bits.png",
                "Test top-1 vs stored bits per weight (codes + scales: b-bit GPFQ stores b + 1) per training variant "
                "(error bars: ± 1 std over seeds, clipped to 100 %; 'float' = uncompressed).",
            )
        )
    frontier = budget_frontier(results, fig_dir / "budget_frontier.png")
    if frontier is not None:
        blocks += [
            Heading("Accuracy vs storage under a budget"),
            FigureBlock(
                "figures/budget_frontier.png",
                "Test top-1 against stored bits per weight (codes + scales + zero points): widths chosen per layer "
                "under each budget (curve, mean over seeds) against the same method at uniform widths (points); "
                "dotted: float top-1 of each training variant.",
            ),
        ]
    option = figures.heatmap_option(results)
    scale = figures.drop_scale(results, option) if option is not None else None
    heat = [
        figures.drop_heatmap(results, m, fig_dir / f"drop_heatmap_{i}.png", option, scale)
        for i, m in enumerate(results.methods())
    ]
    if any(heat):
        blocks.append(Heading(f"Accuracy drop: {option} × bits"))
        blocks += [
            FigureBlock(
                f"figures/{p.name}", f"Top-1 drop (points) of {m}, {option} × bits (one colour scale for all methods)."
            )
            for p, m in zip(heat, results.methods())
            if p is not None
        ]
    mh, mrows, mcsv = _method_rows(results)
    write_csv(out / "methods.csv", mcsv)
    blocks += [Heading("Compression methods"), Table(mh, mrows, "methods.csv")]
    hists = _histogram_figures(results, store, fig_dir)
    if hists:
        blocks += [Heading("Weight distributions before and after quantization"), *hists]
    curves = [(o, figures.training_curves(results, o, fig_dir / f"training_curves_{o}.png")) for o in results.varied]
    if any(p for _, p in curves):
        blocks.append(Heading("Training curves"))
        blocks += [FigureBlock(f"figures/{p.name}", f"Training curves grouped by {o}.") for o, p in curves if p]
    logits = figures.logit_statistics(results, fig_dir / "logit_statistics.png")
    if logits is not None:
        blocks += [Heading("Logit statistics"), FigureBlock("figures/logit_statistics.png", "Logit statistics.")]
    blocks += _landscape_blocks(results, store, out)
    if results.failures:
        blocks += [
            Heading("Failed jobs"),
            Table(["job", "error", "at"], [[f["key"], f["error"], f["at"]] for f in results.failures]),
        ]
    prov = results.provenance
    blocks += [
        Heading("Provenance"),
        Table(
            ["run started", "losslab", "git commit"],
            [[p["started_at"], p["losslab_version"], p["git_commit"]] for p in prov],
        ),
    ]
    blocks.append(
        Paragraph(f"Tables as CSV: summary.csv ({len(summary)} rows), results.csv, runs.csv, layers.csv, methods.csv.")
    )
    return blocks


def _landscape_blocks(results: StudyResults, store: StudyStore, out: Path) -> list[Block]:
    """ "Landscape vs compression" (losslab.report.landscape), when the study's models were probed."""
    from losslab.report import landscape as ls

    rows = ls.landscape_rows(results, ls.read_landscapes(results, store.path.parent))
    if not rows:
        return []
    ranked = ls.ranking(rows)
    write_csv(out / "landscape.csv", [{k: v for k, v in r.items() if k not in ("x", "y", "variants")} for r in rows])
    blocks: list[Block] = [
        Heading("Landscape vs compression"),
        Paragraph(
            "Kendall's τ-b between each loss-landscape probe (losslab landscape, per trained model) and the top-1 "
            "drop at each (method, bits), with a 95 % bootstrap interval over the models; granulated τ (Jiang et "
            "al. 2020): τ among models differing in one training option only, averaged over the rest. "
            + ls.verdict(ranked)
        ),
        Table(
            ["probe", "mean τ", "mean granulated τ", "intervals > 0", "intervals < 0"],
            [
                [
                    r["probe"],
                    _fmt(r["mean_tau"], "+.2f"),
                    _fmt(r["mean_granulated_tau"], "+.2f"),
                    f"{r['positive']}/{r['points']}",
                    f"{r['negative']}/{r['points']}",
                ]
                for r in ranked
            ],
            "landscape.csv",
        ),
    ]
    for i, r in enumerate(ranked):
        path = ls.scatter(rows, r["probe"], out / "figures" / f"landscape_{i}.png")
        if path is not None:
            blocks.append(FigureBlock(f"figures/{path.name}", f"{r['probe']} vs top-1 drop, one colour per variant."))
    return blocks


def render_markdown_report(blocks: list[Block]) -> str:
    """The blocks as Markdown (figures linked by relative path)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            parts.append(b.text)
        elif isinstance(b, Table):
            parts.append(render_markdown(b.header, b.rows) + (f"\n\n(CSV: [{b.csv}]({b.csv}))" if b.csv else ""))
        else:
            parts.append(f"![{b.caption}]({b.path})\n\n*{b.caption}*")
    return "\n\n".join(parts) + "\n"


def render_html_report(blocks: list[Block], root: Path) -> str:
    """The blocks as one self-contained HTML page (PNG figures embedded as base64)."""
    e = html.escape
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b.rows)
            link = f'<p class="csv">CSV: <a href="{e(b.csv)}">{e(b.csv)}</a></p>' if b.csv else ""
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{link}")
        else:
            data = base64.b64encode((root / b.path).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
    title = next((b.text for b in blocks if isinstance(b, Heading)), "losslab report")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,td:nth-child(2),th{text-align:left}img{max-width:100%}"
        "figcaption{font-style:italic;font-size:0.9em}.csv{font-size:0.8em}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title><style>{style}</style>'
        f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


#: What a report folder holds; an existing one is replaced only with ``overwrite``.
REPORT_OUTPUTS = [
    "report.md",
    "report.html",
    "figures",
    "summary.csv",
    "results.csv",
    "runs.csv",
    "layers.csv",
    "methods.csv",
]


def build_report(
    source: StudyStore | str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """Write the report of a study (store, study folder or ``study.db``); returns the ``report.html`` path.

    ``out_dir`` defaults to ``STUDY_DIR/report``. The folder is claimed before anything is drawn
    (:func:`losslab.io.claim_output_dir`): a new or empty folder, or a losslab report folder, whose report is
    replaced only with ``overwrite``; a folder of the user's is refused. Raises :class:`LosslabError` if the
    study holds no results.
    """
    store = source if isinstance(source, StudyStore) else StudyStore.open(source)
    try:
        results = load_results(store)
        if not results.compressions:
            raise LosslabError(
                f"study {str(store.path.parent)!r} holds no compressed results yet; run "
                "`losslab study run STUDY.yaml` first (or let it finish a job)"
            )
        out = Path(out_dir) if out_dir is not None else store.path.parent / "report"
        claim_output_dir(
            out,
            kind="report",
            outputs=REPORT_OUTPUTS,
            overwrite=overwrite,
            flag="--out-dir",
            adopt=lambda folder: out_dir is None,  # the study's own report/ folder, from before markers existed
        )
        blocks = _blocks(results, store, out)
    finally:
        if store is not source:
            store.close()
    write_text_atomic(out / "report.md", render_markdown_report(blocks))
    return write_text_atomic(out / "report.html", render_html_report(blocks, out))
