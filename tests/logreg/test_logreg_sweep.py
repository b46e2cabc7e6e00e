"""``losslab logreg sweep``: one CSV row per grid point, each equal to the single fit of that point, in a run folder
that a killed sweep resumes from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli import cli
from losslab.cli.logreg import DATASET_NAMES
from losslab.data.binary_tables import DATASETS, load_split
from losslab.errors import LosslabError
from losslab.logreg import fit_logistic_regression
from losslab.logreg import sweep as sweep_module
from losslab.logreg.sweep import SWEEP_COLUMNS, SweepConfig, run_sweep_folder, sweep_grid


def test_cli_dataset_names_are_the_bundled_tasks() -> None:
    assert tuple(DATASETS) == DATASET_NAMES


def test_sweep_rows_equal_single_fits(tmp_path: Path) -> None:
    args = ["logreg", "sweep", "--datasets", "iris_binary,wine_binary", "--k", "2,8", "--l2", "0,1e-2"]
    args += ["--seeds", "0,3", "--out-dir", str(tmp_path), "--run-name", "s", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "s"
    assert {p.name for p in run.iterdir()} >= {".losslab-run", "config.yaml", "history.json", "metrics.csv"}
    assert {"checkpoints", "result.json", "sweep.csv", "sweep.png"} <= {p.name for p in run.iterdir()}
    with open(run / "sweep.csv", newline="") as fh:
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
    png = (run / "sweep.png").read_bytes()
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


class Killed(Exception):
    pass


def test_a_killed_sweep_resumes_at_the_first_fit_it_had_not_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the second group's history rows (fits 3-5) and before its checkpoint: --resume redoes that group
    only, and the finished sweep equals an uninterrupted one (rows, history.json) except for the wall-clock column."""
    cfg = SweepConfig(datasets=("iris_binary",), k=(2.0, 8.0), l2=(0.0, 1e-2), seeds=(0,))
    reference = run_sweep_folder(cfg, out_dir=tmp_path, run_name="ref", progress=False)
    assert len(reference.rows) == 6

    real_save, fits = sweep_module.fit_rows, []

    def counting_fit_rows(points, **kwargs):
        for row in real_save(points, **kwargs):
            fits.append(row)
            yield row

    monkeypatch.setattr(sweep_module, "fit_rows", counting_fit_rows)
    from losslab import runs

    real_ckpt_save = runs.save

    saved = []

    def kill_at_second(path, objects):
        saved.append(objects["epoch"])
        if len(saved) == 2:
            raise Killed
        return real_ckpt_save(path, objects)

    monkeypatch.setattr(runs, "save", kill_at_second)
    with pytest.raises(Killed):
        run_sweep_folder(cfg, out_dir=tmp_path, run_name="cut", progress=False)
    monkeypatch.setattr(runs, "save", real_ckpt_save)
    cut = tmp_path / "cut"
    assert saved == [2, 5]  # one checkpoint per (data set, seed, λ) group: fits 0-2, then 3-5
    assert not (cut / "result.json").exists() and len(json.loads((cut / "history.json").read_text())) == 6
    fits.clear()
    with pytest.raises(LosslabError, match="already holds an unfinished run; pass --resume"):
        run_sweep_folder(cfg, out_dir=tmp_path, run_name="cut", progress=False)
    resumed = run_sweep_folder(cfg, resume=cut, progress=False)
    assert len(fits) == 3  # fits 3, 4, 5: the three the checkpoint did not hold

    def without_wall(rows):
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert without_wall(resumed.rows) == without_wall(reference.rows)
    history = json.loads((cut / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(6))
    assert without_wall(history) == without_wall(json.loads((tmp_path / "ref" / "history.json").read_text()))
    with pytest.raises(LosslabError, match="holds a finished run"):
        run_sweep_folder(cfg, resume=cut, progress=False)


def test_resume_with_another_grid_is_refused_before_any_fit(tmp_path: Path) -> None:
    cfg = SweepConfig(datasets=("iris_binary",), k=(2.0,), l2=(0.0,), seeds=(0,))
    run_sweep_folder(cfg, out_dir=tmp_path, run_name="a", progress=False)
    (tmp_path / "a" / "result.json").unlink()
    args = ["logreg", "sweep", "--resume", str(tmp_path / "a"), "--k", "3", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "k=[2.0] (given [3.0])" in str(result.exception)
    result = CliRunner().invoke(cli, ["logreg", "sweep", "--resume", str(tmp_path / "a"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "result.json").read_text())["fits"] == 2


def test_the_sweep_plot_keeps_error_bars_in_range_and_its_legend_off_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracy bars stay within 0–100 %, iteration bars above 0 (mean ± std would cross both here), and the legend
    sits beside the panels: its box overlaps no axes."""
    import matplotlib.collections

    import losslab.report.figures as figures

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.setdefault("fig", fig) and Path(path))
    rows = [
        {"dataset": "iris_binary", "l2": 0.0, "loss": loss, "k": k, "test_accuracy": acc, "iterations": its}
        for loss, k in (("rooted", 2.0), ("rooted", 8.0), ("logistic", None))
        for acc, its in ((1.0, 5), (0.8, 400))
    ]
    sweep_module.plot_sweep(rows, tmp_path / "sweep.png")
    fig = drawn["fig"]
    fig.canvas.draw()
    (top, bottom) = fig.axes[:2]
    for ax, low, high in ((top, 0.0, float("inf")), (bottom, 0.0, 100.0)):
        ys = [
            y
            for c in ax.collections
            if isinstance(c, matplotlib.collections.LineCollection)
            for seg in c.get_segments()
            for _, y in seg
        ]
        assert ys and min(ys) >= low and max(ys) <= high, (ax.get_ylabel(), min(ys), max(ys))
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
