"""``losslab logreg sweep``: one CSV row per grid point, each equal to the single fit of that point."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli import cli
from losslab.cli.logreg import DATASET_NAMES
from losslab.data.binary_tables import DATASETS, load_split
from losslab.errors import LosslabError
from losslab.objectives import fit_logistic_regression
from losslab.objectives.logreg_sweep import SWEEP_COLUMNS, sweep_grid


def test_cli_dataset_names_are_the_bundled_tasks() -> None:
    assert tuple(DATASETS) == DATASET_NAMES


def test_sweep_rows_equal_single_fits(tmp_path: Path) -> None:
    args = ["logreg", "sweep", "--datasets", "iris_binary,wine_binary", "--k", "2,8", "--l2", "0,1e-2"]
    args += ["--seeds", "0,3", "--out-dir", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SWEEP_COLUMNS
    grid = {
        (d, s, l2, loss, k)
        for d in DATASETS
        if d in ("iris_binary", "wine_binary")
        for s in (0, 3)
        for l2 in (0.0, 1e-2)
        for loss, k in (("logistic", None), ("rooted", 2.0), ("rooted", 8.0))
    }
    seen = {(r["dataset"], int(r["seed"]), float(r["l2"]), r["loss"], float(r["k"]) if r["k"] else None) for r in rows}
    assert len(rows) == len(grid) == 24 and seen == grid
    for row in rows:
        split = load_split(row["dataset"], seed=int(row["seed"]))
        k = float(row["k"]) if row["k"] else None
        fit = fit_logistic_regression(split.X_train, split.y_train, loss=row["loss"], k=k, l2=float(row["l2"]))
        assert int(row["iterations"]) == fit.iterations
        assert row["stop_reason"] == fit.stop_reason
        assert float(row["objective"]) == fit.objective
        assert float(row["test_accuracy"]) == fit.score(split.X_test, split.y_test)
        assert float(row["train_accuracy"]) == fit.score(split.X_train, split.y_train)
    png = (tmp_path / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"datasets": ["nope"]}, "nope"),
        ({"ks": [0.0]}, "k"),
        ({"l2s": [-1.0]}, "l2"),
        ({"seeds": []}, "seeds"),
    ],
)
def test_sweep_grid_rejects_bad_values_before_work(kwargs: dict, message: str) -> None:
    base = {"datasets": ["iris_binary"], "ks": [2.0], "l2s": [0.0], "seeds": [0]}
    with pytest.raises(LosslabError, match=message):
        sweep_grid(**{**base, **kwargs})
