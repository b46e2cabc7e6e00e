"""``losslab logreg``: linear logistic regression with the logistic or rooted loss, and the RLO comparison study.

    losslab logreg --dataset breast_cancer --loss rooted --k 3 --l2 1e-3
    losslab logreg --dataset breast_cancer --compare --k 3 --k 10 --json logreg.json
    losslab logreg --csv data.csv --target label --solver newton
    losslab logreg sweep --datasets breast_cancer,wine_binary --k 1,3,10 --l2 0,1e-3 --seeds 0,1,2 --run-name rlo

Datasets are scikit-learn's bundled tables (no download) turned into binary tasks, or a seeded separable set: the
tasks of :mod:`losslab.data.binary_tables`, whose docstring lists their sizes and classes.

A CSV file (header row, numeric feature columns) works with ``--csv FILE --target COLUMN``; the target column must
hold exactly two distinct values, and the larger (numerically, else alphabetically) is the positive class. Every
task gets a stratified train/test split seeded by ``--seed`` (default 30 % test) and is standardised with the
training split's mean and standard deviation. ``--compare`` fits the logistic loss and the rooted loss for every
``--k`` on the same split and prints iterations to tolerance and accuracies side by side; ``--json`` writes every
fit (weights, per-iteration history, options) atomically. The fits are :func:`fit_logistic_regression` calls.
``sweep`` runs :mod:`losslab.logreg.sweep` in a run folder (``--out-dir``/``--run-name``; a CSV row per fit and a
plot of iterations and test accuracy vs k; ``--resume`` continues a killed sweep, ``--overwrite`` replaces a finished
one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.groups import shared_option
from losslab.cli.options import (
    LosslabCommand,
    check_new_output,
    given_options,
    json_option,
    options_from_model,
    overwrite_option,
    report_with_json,
)
from losslab.logreg.config import DATASET_NAMES, LogregConfig, LogregSweepOptions

__all__ = ["DATASET_NAMES", "logreg"]


class _LogregGroup(click.Group):
    """``losslab logreg [OPTIONS]`` fits; ``losslab logreg sweep ...`` runs the sweep subcommand."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] | sweep [SWEEP OPTIONS]")


@click.group("logreg", invoke_without_command=True, cls=_LogregGroup)
@options_from_model(LogregConfig)
@json_option("Write every fit (weights, history, options) to")
@overwrite_option
def logreg(json_path: Path | None, overwrite: bool, **flags: Any) -> None:
    """Logistic regression with the logistic or rooted (RLO) loss; --compare runs the seed's study on one split.

    `losslab logreg sweep` runs the grid k × λ × data sets × seeds (see its --help).
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from losslab.logreg.config import run_config

    check_new_output(json_path, overwrite)
    report = run_config(LogregConfig(**given_options(flags)))
    record = {"dataset": report["dataset"], "protocol": report["protocol"], "runs": report["runs"]}
    report_with_json(
        json_path,
        record,
        overwrite=overwrite,
        show=lambda: click.echo(f"{report['table']}\n\n{report['protocol']}"),
        label="results",
    )


@logreg.command("sweep", cls=LosslabCommand)
@options_from_model(LogregSweepOptions)
@shared_option("out_dir", "the folder of run folders", default=Path("runs"))
@shared_option("run_name", default="logreg_sweep")
@shared_option("resume", "a sweep")
@shared_option("overwrite", "a finished sweep's run folder", default=False)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: a bar on a terminal, else a line per fit]."
)
def sweep(
    out_dir: Path, run_name: str, resume: Path | None, overwrite: bool, progress: bool | None, **flags: Any
) -> None:
    """Sweep k × λ × data sets × seeds (logistic as reference) into a run folder: sweep.csv (one row per fit),
    sweep.png, history.json / metrics.csv, checkpoints/last.ckpt (for --resume) and result.json.

    The plot shows iterations and test accuracy vs k, one line per data set (mean ± std over seeds), the logistic
    loss dashed. Each row equals `losslab logreg --dataset D --loss L --k K --l2 λ --seed S`.
    """
    from losslab.logreg.sweep import SweepConfig, run_sweep_folder, stored_config, summary_table

    given = LogregSweepOptions(**given_options(flags)).sweep_settings()
    # a resumed sweep: its stored config, with the options given on this command line on top (must agree)
    cfg = stored_config(resume, given) if resume is not None else SweepConfig.from_dict(given)
    done = run_sweep_folder(
        cfg, out_dir=out_dir, run_name=run_name, resume=resume, overwrite=overwrite, progress=progress
    )
    click.echo(summary_table(done.rows))
    click.echo(
        f"\n{len(done.rows)} fits ({cfg.solver}); run folder: {done.run_dir}; rows: {done.csv_path}; "
        f"plot: {done.png_path}"
    )
