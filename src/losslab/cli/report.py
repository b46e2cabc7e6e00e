"""``losslab report STUDY_DIR [--out-dir DIR]``: write a study's Markdown/HTML report, figures and CSV tables."""

from __future__ import annotations

from pathlib import Path

import click

from losslab.cli.options import LosslabCommand, out_dir_option, overwrite_option


@click.command("report", cls=LosslabCommand)
@click.argument("study_dir", type=click.Path(path_type=Path))
@out_dir_option("Report folder (default: STUDY_DIR/report); a new or empty folder, or a losslab report folder.")
@overwrite_option
def report(study_dir: Path, out_dir: Path | None, overwrite: bool) -> None:
    """Draw the report of a study: accuracy vs bits, drop heatmaps, weight histograms, training curves.

    An existing report is replaced only with --overwrite; a folder losslab did not make is never written into.
    """
    from losslab.report import build_report

    html_path = build_report(study_dir, out_dir, overwrite=overwrite)
    click.echo(f"report: {html_path} (and {html_path.with_suffix('.md')})")
