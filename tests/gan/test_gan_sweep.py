"""``losslab gan sweep``: one row per (loss, k, seed) run with that run's metrics; finished runs are reused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from losslab.cli import cli


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
        (loss, k, s) for s in "01" for loss, k in (("logistic", ""), ("rooted", "2.0"), ("rooted", "8.0"))
    ]
    for row in rows:
        name = "logistic" if row["loss"] == "logistic" else f"rooted_k{float(row['k']):g}"
        result_json = json.loads((tmp_path / "runs" / f"ring_{name}_seed{row['seed']}" / "result.json").read_text())
        assert int(row["modes_covered"]) == result_json["metrics"]["modes_covered"]
        assert float(row["hq_rate"]) == result_json["metrics"]["hq_rate"]
        assert result_json["config"]["seed"] == int(row["seed"])
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (tmp_path / "runs" / "ring_logistic_seed0" / "result.json").stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "runs" / "ring_logistic_seed0" / "result.json").stat().st_mtime_ns == stamp  # reused
