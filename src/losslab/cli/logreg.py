"""``losslab logreg``: linear logistic regression with the logistic or rooted loss, and the RLO comparison study.

    losslab logreg --dataset breast_cancer --loss rooted --k 3 --l2 1e-3
    losslab logreg --dataset breast_cancer --compare --k 3 --k 10 --json logreg.json
    losslab logreg --csv data.csv --target label --solver newton

Datasets are scikit-learn's bundled tables (no download) turned into binary tasks, or a seeded separable set:

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
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from losslab.cli.options import check_new_output, json_option, overwrite_option, write_json_output
from losslab.errors import ConfigError, DataNotFoundError, LosslabError, check_range, unknown_name_error

if TYPE_CHECKING:
    from losslab.objectives.logistic_regression import LogisticFit


@dataclass(frozen=True)
class BinaryTask:
    """A binary classification table before splitting: ``X`` [n, d] float64, ``y`` [n] in {0, 1}."""

    name: str
    X: np.ndarray
    y: np.ndarray
    negative: str
    positive: str


@dataclass(frozen=True)
class BinarySplit:
    """A standardised, stratified train/test split of a :class:`BinaryTask` (labels in {0, 1})."""

    task: BinaryTask
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    seed: int
    test_fraction: float

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: sizes, classes, seed, split and scaling."""
        return {
            "name": self.task.name,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "n_features": self.X_train.shape[1],
            "negative_class": self.task.negative,
            "positive_class": self.task.positive,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "scaling": "standardised with the training split's mean and standard deviation",
        }


def synthetic_separable(n_samples: int = 200, n_features: int = 2, gap: float = 0.2, seed: int = 0) -> BinaryTask:
    """A linearly separable set: x ~ N(0, diag(s)²), s log-spaced from 3 to 0.3; y = [w·x > 0] for a random unit w.

    Each point is then moved ``gap`` along ±w away from the plane, so every margin w·x·(2y − 1) is ≥ ``gap``.
    The anisotropic scales make the hard-margin SVM direction differ from the mean-of-classes direction.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features)) * np.geomspace(3.0, 0.3, n_features)
    w = rng.normal(size=n_features)
    w /= np.linalg.norm(w)
    signs = np.where(X @ w > 0, 1.0, -1.0)
    X = X + gap * signs[:, None] * w
    return BinaryTask("synthetic_separable", X, (signs > 0).astype(np.int64), "w·x < 0", "w·x > 0")


def _sklearn_task(name: str, loader: str, positive: set[int], negative: set[int]) -> Callable[[int], BinaryTask]:
    """A task from a bundled scikit-learn loader, keeping the rows of the ``positive`` and ``negative`` classes."""

    def load(seed: int) -> BinaryTask:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        keep = np.isin(bunch.target, sorted(positive | negative))
        y = np.isin(bunch.target[keep], sorted(positive)).astype(np.int64)

        def class_names(ids: set[int]) -> str:
            return "+".join(str(bunch.target_names[i]) for i in sorted(ids))

        return BinaryTask(name, bunch.data[keep].astype(np.float64), y, class_names(negative), class_names(positive))

    return load


DATASETS: dict[str, Callable[[int], BinaryTask]] = {
    "breast_cancer": _sklearn_task("breast_cancer", "load_breast_cancer", positive={1}, negative={0}),
    "iris_binary": _sklearn_task("iris_binary", "load_iris", positive={2}, negative={1}),
    "digits_binary": _sklearn_task("digits_binary", "load_digits", positive={8}, negative={3}),
    "wine_binary": _sklearn_task("wine_binary", "load_wine", positive={0}, negative={1, 2}),
    "synthetic_separable": lambda seed: synthetic_separable(seed=seed),
}


def check_dataset_name(name: str) -> None:
    """Raise :class:`LosslabError` unless ``name`` is a bundled dataset."""
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def read_csv_task(path: Path, target: str) -> BinaryTask:
    """A binary task from a CSV file with a header row: ``target`` names the label column, all others are features.

    Raises :class:`DataNotFoundError` for a missing file and :class:`LosslabError` for a missing column,
    non-numeric or empty feature cells, or a target without exactly two distinct values.
    """
    if not path.is_file():
        raise DataNotFoundError(f"--csv {str(path)!r} is not a file; give the path of a CSV file with a header row")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh) if row]
    if not rows:
        raise LosslabError(f"--csv {str(path)!r} is empty; it needs a header row and data rows")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if target not in header:
        raise LosslabError(f"--target {target!r} is not a column of {str(path)!r}; columns: {', '.join(header)}")
    if len(body) < 4:
        raise LosslabError(f"{str(path)!r} has {len(body)} data rows; a train/test split needs at least 4")
    column = header.index(target)
    features = np.empty((len(body), len(header) - 1))
    labels = []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise LosslabError(f"{str(path)!r} line {line} has {len(row)} cells; the header has {len(header)}")
        labels.append(row[column].strip())
        cells = [cell for j, cell in enumerate(row) if j != column]
        names = [name for j, name in enumerate(header) if j != column]
        for j, (cell, name) in enumerate(zip(cells, names)):
            value = _float_or_none(cell)
            if value is None or not np.isfinite(value):
                raise LosslabError(
                    f"{str(path)!r} line {line}, column {name!r}: {cell!r} is not a finite number; feature columns "
                    "must be numeric (drop or encode this column, or impute missing cells)"
                )
            features[line - 2, j] = value
    classes = sorted(set(labels), key=lambda v: (_float_or_none(v) is None, _float_or_none(v) or 0.0, v))
    if len(classes) != 2:
        shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
        raise LosslabError(
            f"--target {target!r} has {len(classes)} distinct value(s) ({shown}); logistic regression needs exactly "
            "2: pick a binary column or filter the rows to two classes"
        )
    y = np.array([label == classes[1] for label in labels], dtype=np.int64)
    return BinaryTask(path.name, features, y, classes[0], classes[1])


def split_task(task: BinaryTask, *, seed: int = 0, test_fraction: float = 0.3) -> BinarySplit:
    """Stratified train/test split (``random_state=seed``), standardised with the training statistics.

    Constant training columns keep scale 1 (they become 0). Each class needs at least 2 rows.
    """
    from sklearn.model_selection import train_test_split

    check_range("test_fraction", test_fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    counts = np.bincount(task.y, minlength=2)
    if counts.min() < 2:
        raise LosslabError(f"{task.name}: a class has {counts.min()} row(s); a stratified split needs at least 2 each")
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            task.X, task.y, test_size=test_fraction, random_state=seed, stratify=task.y
        )
    except ValueError as err:
        raise LosslabError(f"{task.name}: cannot split with test_fraction={test_fraction} ({err})") from err
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    return BinarySplit(task, (X_train - mean) / std, y_train, (X_test - mean) / std, y_test, seed, test_fraction)


def load_split(
    dataset: str | None = None,
    csv_path: Path | None = None,
    target: str | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> BinarySplit:
    """The split of a bundled ``dataset`` or of a CSV file (``csv_path`` + ``target``); one source only."""
    if (dataset is None) == (csv_path is None):
        raise ConfigError("give either --dataset NAME or --csv FILE --target COLUMN (exactly one data source)")
    if csv_path is None:
        if target is not None:
            raise ConfigError("--target applies to --csv; bundled datasets have their own target")
        check_dataset_name(dataset)  # type: ignore[arg-type]
        task = DATASETS[dataset](seed)  # type: ignore[index]
    else:
        if target is None:
            raise ConfigError("--csv needs --target COLUMN, the name of the label column")
        task = read_csv_task(csv_path, target)
    return split_task(task, seed=seed, test_fraction=test_fraction)


def fit_split(split: BinarySplit, *, loss: str, k: float | None, **options: Any) -> LogisticFit:
    """:func:`fit_logistic_regression` on the split's training rows."""
    from losslab.objectives.logistic_regression import fit_logistic_regression

    return fit_logistic_regression(split.X_train, split.y_train, loss=loss, k=k, **options)


def check_runs(runs: list[tuple[str, float | None]], **options: Any) -> None:
    """Raise :class:`ConfigError` if any (loss, k) of ``runs`` with ``options`` is not allowed (no work done)."""
    from losslab.objectives.logistic_regression import check_options

    settings = {key: options[key] for key in ("l2", "solver", "lr", "max_iter", "tol") if key in options}
    for loss, k in runs:
        check_options(loss=loss, k=k, **settings)


def run_logreg(split: BinarySplit, runs: list[tuple[str, float | None]], **options: Any) -> dict[str, Any]:
    """Fit every (loss, k) of ``runs`` on ``split`` with the same ``options``; returns table, records, protocol.

    All settings are checked before the first fit.
    """
    from losslab.tables import format_table

    check_runs(runs, **options)
    rows, records = [], []
    for loss, k in runs:
        fit = fit_split(split, loss=loss, k=k, **options)
        train_acc, test_acc = fit.score(split.X_train, split.y_train), fit.score(split.X_test, split.y_test)
        weight_norm = float(fit.weights.norm())
        rows.append(
            [
                loss,
                "-" if fit.options.k is None else f"{fit.options.k:g}",
                fit.iterations,
                fit.function_evals,
                "yes" if fit.converged else "no",
                fit.stop_reason,
                f"{fit.objective:.6f}",
                f"{fit.grad_norm:.1e}",
                f"{weight_norm:.3f}",
                100 * train_acc,
                100 * test_acc,
            ]
        )
        records.append(
            {
                "loss": loss,
                "k": fit.options.k,
                "train_accuracy": train_acc,
                "test_accuracy": test_acc,
                "weight_norm": weight_norm,
                **fit.to_dict(),
            }
        )
    headers = ["loss", "k", "iters", "evals", "converged", "stop", "objective", "|grad F|", "|w|", "train %", "test %"]
    info, first = split.describe(), records[0]["options"]
    protocol = (
        f"{info['name']}: {info['n_train']} train / {info['n_test']} test rows, {info['n_features']} features "
        f"standardised on train, positive class {info['positive_class']!r}, stratified split seed {split.seed}; "
        f"solver {first['solver']}, l2 {first['l2']:g}, tol {first['tol']:g} on ||grad F||_2, start w = 0; "
        "objective F includes the rooted loss's constant k"
    )
    table = format_table(headers, rows, align="llrrllrrrrr")
    return {"table": table, "protocol": protocol, "dataset": info, "runs": records}


@click.command("logreg")
@click.option("--dataset", default=None, help=f"Bundled task: {', '.join(DATASETS)} [default: breast_cancer].")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="CSV file with a header row.")
@click.option("--target", default=None, help="Label column of --csv (exactly two distinct values).")
@click.option("--loss", default=None, help="logistic or rooted [default: rooted]; not with --compare.")
@click.option(
    "--k", "ks", type=float, multiple=True, help="Rooted loss k > 0 [default: 3]; repeat with --compare (--k 3 --k 10)."
)
@click.option("--l2", type=float, default=0.0, show_default=True, help="L2 penalty (l2/2)||w||^2 (not on b).")
@click.option("--solver", default=None, help="lbfgs, newton or gd [default: lbfgs].")
@click.option("--lr", type=float, default=None, help="Fixed step for --solver gd [default: Armijo backtracking].")
@click.option("--max-iter", type=int, default=None, help="Iteration cap [default: 10000].")
@click.option("--tol", type=float, default=None, help="Stop when ||grad F||_2 <= tol [default: 1e-06].")
@click.option("--no-intercept", is_flag=True, help="Fit w only (f(x) = w·x).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split (and synthetic data).")
@click.option("--test-fraction", type=float, default=0.3, show_default=True, help="Share of rows held out.")
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
    """Logistic regression with the logistic or rooted (RLO) loss; --compare runs the seed's study on one split."""
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
    return [(loss or "rooted", ks[0] if ks else None)]
