"""Binary classification tables for linear logistic regression: scikit-learn's bundled sets, a seeded separable
set and CSV files, with a stratified, standardised train/test split (gan_and_regression spec §4)::

    from losslab.data.binary_tables import DATASETS, load_split

    split = load_split("breast_cancer", seed=0)          # BinarySplit: X_train [398, 30] float64, y_train in {0, 1}
    split = load_split(csv_path=Path("data.csv"), target="label", seed=1)

Tasks (no download):

    breast_cancer        569 × 30, malignant (0) vs benign (1)
    iris_binary          100 × 4, versicolor (0) vs virginica (1)
    digits_binary        357 × 64, digit 3 (0) vs digit 8 (1)
    wine_binary          178 × 13, cultivars 1-2 (0) vs cultivar 0 (1)
    synthetic_separable  200 × 2, linearly separable with a gap (see :func:`synthetic_separable`)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from losslab.errors import ConfigError, DataNotFoundError, LosslabError, check_range, unknown_name_error
from losslab.io import read_utf8


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
    rows = [row for row in csv.reader(io.StringIO(read_utf8(path, "--csv"), newline="")) if row]
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
