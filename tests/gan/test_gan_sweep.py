"""``losslab gan sweep``: one row per (loss, k, seed) run with that run's metrics; finished runs are reused only when
their stored config equals the asked one, outputs of other settings are not replaced silently; what the plot draws."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli import cli, main
from losslab.gan.sweep import IMAGE_PLOT, TOY_PLOT, sweep_figure


@pytest.mark.slow
def test_gan_sweep_rows_are_the_runs_metrics(tmp_path: Path) -> None:
    args = ["gan", "sweep", "--data", "ring", "--k", "2,8", "--seeds", "0,1", "--toy-samples", "256"]
    args += [
        "--batch-size",
        "128",
        "--width",
        "8",
        "--epochs",
        "1",
        "--eval-samples",
        "500",
        "--out-dir",
        str(tmp_path),
    ]
    args += ["--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["loss"], r["k"], r["seed"]) for r in rows] == [
        (loss, k, s) for s in "01" for loss, k in (("logistic", ""), ("root", "2.0"), ("root", "8.0"))
    ]
    for row in rows:
        name = "logistic" if row["loss"] == "logistic" else f"rooted_k{float(row['k']):g}"
        assert row["run"].startswith(f"ring_{name}_seed{row['seed']}-")
        result_json = json.loads((tmp_path / "runs" / row["run"] / "result.json").read_text())
        assert int(row["modes_covered"]) == result_json["metrics"]["modes_covered"]
        assert float(row["hq_rate"]) == result_json["metrics"]["hq_rate"]
        assert result_json["config"]["seed"] == int(row["seed"])
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (tmp_path / "runs" / rows[0]["run"] / "result.json").stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "runs" / rows[0]["run"] / "result.json").stat().st_mtime_ns == stamp  # reused


def _sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    args = ["gan", "sweep", "--data", "ring", "--k", "2", "--seeds", "0", "--no-logistic", "--toy-samples", "256"]
    args += ["--batch-size", "128", "--width", "8", "--epochs", "1", "--eval-samples", "200"]
    try:
        main([*args, "--out-dir", str(tmp_path), "--no-progress", *extra])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _rows(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "sweep.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_reuses_a_run_only_for_equal_settings_and_never_replaces_outputs_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _sweep(tmp_path, capsys)[0] == 0
    first = _rows(tmp_path)[0]["run"]
    stamp = (tmp_path / "runs" / first / "result.json").stat().st_mtime_ns
    assert _sweep(tmp_path, capsys)[0] == 0 and _rows(tmp_path)[0]["run"] == first  # same settings: reused
    assert (tmp_path / "runs" / first / "result.json").stat().st_mtime_ns == stamp
    csv_bytes, png_bytes = (tmp_path / "sweep.csv").read_bytes(), (tmp_path / "sweep.png").read_bytes()
    code, err = _sweep(tmp_path, capsys, "--lr", "2e-3")  # other settings: refused before any training
    assert code == 2 and "lr differ" in err and "--overwrite" in err
    assert (tmp_path / "sweep.csv").read_bytes() == csv_bytes and (tmp_path / "sweep.png").read_bytes() == png_bytes
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [first]
    assert _sweep(tmp_path, capsys, "--lr", "2e-3", "--overwrite")[0] == 0  # trained under its own name
    second = _rows(tmp_path)[0]["run"]
    assert second != first and sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([first, second])
    assert json.loads((tmp_path / "runs" / second / "result.json").read_text())["config"]["lr"] == 2e-3
    assert json.loads((tmp_path / "runs" / first / "result.json").read_text())["config"]["lr"] == 1e-3
    (tmp_path / "sweep.json").unlink()  # sweep.csv/png no longer marked as a sweep's: never replaced
    code, err = _sweep(tmp_path, capsys, "--lr", "2e-3", "--overwrite")
    assert code == 2 and "did not make" in err and (tmp_path / "sweep.csv").is_file()
    (tmp_path / "sweep.csv").unlink()
    (tmp_path / "sweep.png").unlink()
    shutil.rmtree(tmp_path / "runs" / second)  # a folder of the sweep's name that holds another config
    shutil.copytree(tmp_path / "runs" / first, tmp_path / "runs" / second)
    code, err = _sweep(tmp_path, capsys, "--lr", "2e-3")
    assert code == 2 and "holds a run with other settings" in err


def _rows_for(metric_values: dict[tuple[str, float | None], list[float]], metric: str) -> list[dict]:
    return [
        {"loss": loss, "k": k, "seed": seed, metric: value, "num_modes": 8}
        for (loss, k), values in metric_values.items()
        for seed, value in enumerate(values)
    ]


def _errorbar_ys(ax: object) -> list[float]:
    (container,) = ax.containers  # type: ignore[attr-defined]
    return [float(y) for segment in container[2][0].get_segments() for _, y in segment]


def test_sweep_plot_labels_each_k_and_keeps_bars_in_range() -> None:
    modes = {
        ("logistic", None): [8.0, 6.0],
        ("root", 2.0): [8.0, 7.0],
        ("root", 4.0): [8.0, 8.0],
        ("root", 8.0): [1, 8],
    }
    hq = {
        ("logistic", None): [0.99, 0.6],
        ("root", 2.0): [0.97, 0.99],
        ("root", 4.0): [0.5, 0.5],
        ("root", 8.0): [0.01, 0.3],
    }
    rows = [{**a, **b} for a, b in zip(_rows_for(modes, "modes_covered"), _rows_for(hq, "hq_rate"))]
    fig = sweep_figure(rows, TOY_PLOT[:2])
    cover, rate = fig.axes
    assert [t.get_text() for t in cover.get_xticklabels()] == ["2", "4", "8"]
    assert cover.get_xaxis().get_minor_ticks() == []
    bottom, top = cover.get_ylim()
    ticks = [t for t in cover.get_yticks() if bottom <= t <= top]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert min(_errorbar_ys(cover)) >= 0 and max(_errorbar_ys(cover)) <= 8  # k = 8: mean 4.5 ± 4.9 would pass 8
    assert min(_errorbar_ys(rate)) >= 0 and max(_errorbar_ys(rate)) <= 1
    band = rate.patches[0]
    band_y = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]
    assert band_y.min() >= 0 and band_y.max() <= 1  # logistic 0.795 ± 0.276
    none = sweep_figure(_rows_for({("logistic", None): [0, 0], ("root", 2.0): [0, 0]}, "modes_covered"), TOY_PLOT[:1])
    bottom, top = none.axes[0].get_ylim()
    ticks = [t for t in none.axes[0].get_yticks() if bottom <= t <= top]  # all zero: still whole-number ticks
    assert ticks and all(float(t).is_integer() for t in ticks)
    mmd = sweep_figure(_rows_for({("root", 2.0): [0.02, 0.7], ("root", 4.0): [-0.001, 0.003]}, "mmd2"), TOY_PLOT[2:])
    assert min(_errorbar_ys(mmd.axes[0])) >= 0  # MMD² ≥ 0: 0.36 ± 0.48 stops at 0
    titles = [ax.get_title() for ax in fig.axes]
    assert all("2 seeds" in t for t in titles)
    one_seed = sweep_figure([r for r in rows if r["seed"] == 0], TOY_PLOT[:1])
    assert "1 seed)" in one_seed.axes[0].get_title() and "1 seeds" not in one_seed.axes[0].get_title()


def test_sweep_table_has_no_negative_zero_and_no_std_for_one_seed() -> None:
    from losslab.cli.gan import _fmt

    assert _fmt((-0.0, 0.0, 1)) == "0" and _fmt((-0.0, -0.0, 2)) == "0 ± 0" and _fmt((0.5, 0.1, 3)) == "0.5 ± 0.1"
    fig = sweep_figure(_rows_for({("root", 2.0): [0.5], ("root", 8.0): [0.7]}, "precision"), IMAGE_PLOT[1:2])
    texts = [t.get_text() for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels())]
    assert not any(t.startswith(("-0", "\u22120")) and float(t.replace("\u2212", "-")) == 0 for t in texts if t)
