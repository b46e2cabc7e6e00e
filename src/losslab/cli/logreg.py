"""``losslab logreg``: linear logistic regression with the logistic or rooted loss, and the RLO comparison study.

    losslab logreg --dataset breast_cancer --loss rooted --k 3 --l2 1e-3
    losslab logreg --dataset breast_cancer --compare --k 3 --k 10 --json logreg.json
    losslab logreg --csv data.csv --target label --solver newton
    losslab logreg sweep --datasets breast_cancer,wine_binary --k 1,3,10 --l2 0,1e-3 --seeds 0,1,2 --run-name rlo

Datasets (:mod:`losslab.data.binary_tables`) are scikit-learn's bundled tables (no download) turned into binary
tasks, or a seeded separable set:

    breast_cancer        569 × 30, malignant (0) vs benign (1)
    iris_binary          100 × 4, versicolor (0) vs virginica (1)
    digits_binary        357 × 64, digit 3 (0) vs digit 8 (1)
    wine_binary          178 × 13, cultivars 1-2 (0) vs cultivar 0 (1)
    synthetic_separable  200 × 2, linearly separable with a gap (see :func:`synthetic_separable`)

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

import click

from losslab.cli.groups import K_LIST, SEED_LIST, number_type, shared_option
from losslab.cli.options import (
    FloatList,
    LosslabCommand,
    check_new_output,
    json_option,
    overwrite_option,
    write_json_output,
)
from losslab.errors import ConfigError

# The losses losslab logreg fits, in the shared vocabulary (--loss rooted = root), and their names in losslab.logreg.
LOGREG_LOSSES = ("logistic", "root")
LOGREG_NAMES = {"root": "rooted"}

# The numeric options of logreg and logreg sweep (losslab.logreg.model's checks, at parse time).
L2 = number_type(float, ge=0)
MAX_ITER = number_type(int, ge=1)
TOL = number_type(float, ge=0)
TEST_FRACTION = number_type(float, gt=0, lt=1)

DATASET_NAMES = ("breast_cancer", "iris_binary", "digits_binary", "wine_binary", "synthetic_separable")
"""The bundled tasks of :data:`losslab.data.binary_tables.DATASETS`, spelled out so ``--help`` needs no torch import
(a test checks the two agree)."""


class _LogregGroup(click.Group):
    """``losslab logreg [OPTIONS]`` fits; ``losslab logreg sweep ...`` runs the sweep subcommand."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] | sweep [SWEEP OPTIONS]")


@click.group("logreg", invoke_without_command=True, cls=_LogregGroup)
@click.option("--dataset", default=None, help=f"Bundled task: {', '.join(DATASET_NAMES)} [default: breast_cancer].")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="CSV file with a header row.")
@click.option("--target", default=None, help="Label column of --csv (exactly two distinct values).")
@shared_option("loss", "not with --compare", losses=LOGREG_LOSSES, config_default="root")
@shared_option("k", "repeat with --compare (--k 3 --k 10)", dest="ks", multiple=True, config_default=3.0)
@click.option("--l2", type=L2, default=0.0, show_default=True, help="L2 penalty (l2/2)||w||^2 (not on b).")
@click.option("--solver", default=None, help="lbfgs, newton or gd [default: lbfgs].")
@click.option(
    "--lr",
    type=number_type(float, gt=0),
    default=None,
    help="Fixed step for --solver gd [default: Armijo backtracking].",
)
@click.option("--max-iter", type=MAX_ITER, default=None, help="Iteration cap [default: 10000].")
@click.option("--tol", type=TOL, default=None, help="Stop when ||grad F||_2 <= tol [default: 1e-06].")
@click.option("--no-intercept", is_flag=True, help="Fit w only (f(x) = w·x).")
@shared_option("seed", "of the split (and synthetic data)", default=0)
@click.option("--test-fraction", type=TEST_FRACTION, default=0.3, show_default=True, help="Share of rows held out.")
@click.option("--compare", is_flag=True, help="Fit logistic and rooted (each --k) on the same split, side by side.")
@json_option("Write every fit (weights, history, options) to")
@overwrite_option
def logreg(
    dataset: str | None,
    csv_path: Path | None,
    target: str | None,
    loss: str | None,
    ks: tuple[float, ...],
    l2: float,
    solver: str | None,
    lr: float | None,
    max_iter: int | None,
    tol: float | None,
    no_intercept: bool,
    seed: int,
    test_fraction: float,
    compare: bool,
    json_path: Path | None,
    overwrite: bool,
) -> None:
    """Logistic regression with the logistic or rooted (RLO) loss; --compare runs the seed's study on one split.

    `losslab logreg sweep` runs the grid k × λ × data sets × seeds (see its --help).
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from losslab.data.binary_tables import load_split
    from losslab.logreg.fits import check_runs, run_logreg

    check_new_output(json_path, overwrite)
    runs = _runs(loss, ks, compare)
    given = {"solver": solver, "lr": lr, "max_iter": max_iter, "tol": tol}
    options = {"l2": l2, "fit_intercept": not no_intercept, **{key: v for key, v in given.items() if v is not None}}
    check_runs(runs, **options)
    if dataset is None and csv_path is None:
        dataset = "breast_cancer"
    split = load_split(dataset, csv_path, target, seed=seed, test_fraction=test_fraction)
    report = run_logreg(split, runs, **options)
    record = {"dataset": report["dataset"], "protocol": report["protocol"], "runs": report["runs"]}
    if json_path is not None and str(json_path) == "-":  # stdout holds the JSON only
        write_json_output(json_path, record, overwrite=overwrite)
        return
    click.echo(report["table"])
    click.echo(f"\n{report['protocol']}")
    if json_path is not None:
        click.echo(f"results: {write_json_output(json_path, record, overwrite=overwrite)}")


def _runs(loss: str | None, ks: tuple[float, ...], compare: bool) -> list[tuple[str, float | None]]:
    """The (loss, k) pairs to fit: logistic plus rooted per k with ``compare``, else the one chosen loss.

    k None means the API default (3) for the rooted loss.
    """
    if compare:
        if loss is not None:
            raise ConfigError("--compare fits both losses; drop --loss")
        return [("logistic", None), *(("rooted", k) for k in (dict.fromkeys(ks) or [None]))]
    if len(ks) > 1:
        raise ConfigError(f"--k was given {len(ks)} times; give one k, or add --compare to fit several")
    return [(LOGREG_NAMES.get(loss or "root", loss or "root"), ks[0] if ks else None)]


def _listed(values: tuple[float, ...] | tuple[int, ...] | tuple[str, ...]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _sweep_defaults() -> dict[str, str]:
    """The sweep options' defaults, spelled from :class:`losslab.logreg.sweep.SweepConfig` (no torch import)."""
    from losslab.logreg.sweep import SweepConfig

    base = SweepConfig()
    return {
        "datasets": _listed(base.datasets),
        "k": _listed(base.k),
        "l2": _listed(base.l2),
        "seeds": _listed(base.seeds),
    }


SWEEP_DEFAULTS = _sweep_defaults()


@logreg.command("sweep", cls=LosslabCommand)
@click.option("--datasets", default=SWEEP_DEFAULTS["datasets"], show_default=True, help="Comma list of bundled tasks.")
@click.option(
    "--k",
    "ks",
    type=K_LIST,
    default=SWEEP_DEFAULTS["k"],
    show_default=True,
    help="Rooted loss k values (each as --k of losslab logreg).",
)
@click.option("--l2", "l2s", type=FloatList(L2), default=SWEEP_DEFAULTS["l2"], show_default=True, help="λ values.")
@click.option("--seeds", type=SEED_LIST, default=SWEEP_DEFAULTS["seeds"], show_default=True, help="Split seeds.")
@click.option("--no-logistic", is_flag=True, help="Leave out the logistic reference fits.")
@click.option("--solver", default="lbfgs", show_default=True, help="lbfgs, newton or gd.")
@click.option("--max-iter", type=MAX_ITER, default=None, help="Iteration cap [default: 10000].")
@click.option("--tol", type=TOL, default=None, help="Stop when ||grad F||_2 <= tol [default: 1e-06].")
@click.option("--test-fraction", type=TEST_FRACTION, default=0.3, show_default=True, help="Share of rows held out.")
@shared_option("out_dir", "the folder of run folders", default=Path("runs"))
@shared_option("run_name", default="logreg_sweep")
@shared_option("resume", "a sweep")
@shared_option("overwrite", "a finished sweep's run folder", default=False)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: a bar on a terminal, else a line per fit]."
)
def sweep(
    datasets: str,
    ks: list[float],
    l2s: list[float],
    seeds: list[int],
    no_logistic: bool,
    solver: str,
    max_iter: int | None,
    tol: float | None,
    test_fraction: float,
    out_dir: Path,
    run_name: str,
    resume: Path | None,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Sweep k × λ × data sets × seeds (logistic as reference) into a run folder: sweep.csv (one row per fit),
    sweep.png, history.json / metrics.csv, checkpoints/last.ckpt (for --resume) and result.json.

    The plot shows iterations and test accuracy vs k, one line per data set (mean ± std over seeds), the logistic
    loss dashed. Each row equals `losslab logreg --dataset D --loss L --k K --l2 λ --seed S`.
    """
    from losslab.logreg.sweep import SweepConfig, run_sweep_folder, stored_config, summary_table

    ctx = click.get_current_context()
    settings = {
        "datasets": tuple(name.strip() for name in datasets.split(",") if name.strip()),
        "k": tuple(ks),
        "l2": tuple(l2s),
        "seeds": tuple(seeds),
        "include_logistic": not no_logistic,
        "solver": solver,
        "max_iter": max_iter,
        "tol": tol,
        "test_fraction": test_fraction,
    }
    params = {"datasets": "datasets", "k": "ks", "l2": "l2s", "seeds": "seeds", "include_logistic": "no_logistic"}
    if resume is not None:  # the stored config, with the options given on this command line on top (must agree)
        given = {
            key: value
            for key, value in settings.items()
            if ctx.get_parameter_source(params.get(key, key)) != click.core.ParameterSource.DEFAULT
        }
        cfg = stored_config(resume, given)
    else:
        cfg = SweepConfig.from_dict(settings)
    done = run_sweep_folder(
        cfg, out_dir=out_dir, run_name=run_name, resume=resume, overwrite=overwrite, progress=progress
    )
    click.echo(summary_table(done.rows))
    click.echo(
        f"\n{len(done.rows)} fits ({cfg.solver}); run folder: {done.run_dir}; rows: {done.csv_path}; "
        f"plot: {done.png_path}"
    )
