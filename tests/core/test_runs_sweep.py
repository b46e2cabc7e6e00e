"""``losslab.runs.sweep``, the helper ``gan sweep`` and ``logreg sweep`` share: the grid's order, the cell states of a
run folder, the CSV and the means over seeds (against ``statistics`` and hand-written expectations)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.runs import sweep


def test_loss_axis_puts_logistic_first_and_counts_each_k_once() -> None:
    assert sweep.loss_axis([8, 2, 8.0]) == [("logistic", None), ("root", 8.0), ("root", 2.0)]
    assert sweep.loss_axis([3], include_logistic=False, rooted="rooted") == [("rooted", 3.0)]


def test_grid_is_the_product_with_the_first_axis_slowest() -> None:
    cells = sweep.grid({"seed": [0, 1, 0], "k": ["a", "b"]})
    assert cells == [{"seed": 0, "k": "a"}, {"seed": 0, "k": "b"}, {"seed": 1, "k": "a"}, {"seed": 1, "k": "b"}]
    assert sweep.grid({"seed": [], "k": [1]}) == []


def test_identity_ignores_left_out_keys_and_key_order() -> None:
    a = sweep.identity({"lr": 1e-3, "seed": 0, "out_dir": "x"}, leave_out=("out_dir",))
    b = sweep.identity({"seed": 0, "lr": 1e-3, "out_dir": "y"}, leave_out=("out_dir",))
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert sweep.identity({"seed": 1, "lr": 1e-3}) != a


def _ident(raw: dict) -> str | None:
    return sweep.identity(raw) if "seed" in raw else None


def test_cell_state_new_unfinished_done_and_foreign(tmp_path: Path) -> None:
    run = tmp_path / "cell"
    want = sweep.identity({"seed": 0})
    assert sweep.cell_state(run, want, _ident) == "new"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    assert sweep.cell_state(run, want, _ident) == "new"  # killed before its first checkpoint
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert sweep.cell_state(run, want, _ident) == "unfinished"
    (run / "result.json").write_text(json.dumps({"config": {"seed": 0}}))
    assert sweep.cell_state(run, want, _ident) == "done"
    (run / "result.json").write_text(json.dumps({"config": {"seed": 1}}))
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        sweep.cell_state(run, want, _ident)
    (run / "result.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        sweep.cell_state(run, want, _ident)
    (run / "result.json").unlink()
    (run / "config.yaml").write_text("a: [")  # invalid YAML
    with pytest.raises(ConfigError, match="other settings"):
        sweep.cell_state(run, want, _ident)


def test_rows_csv_has_the_union_of_columns_and_empty_cells(tmp_path: Path) -> None:
    rows = [{"loss": "logistic", "k": None, "hq": 0.5}, {"loss": "root", "k": 2.0, "extra": 3}]
    path = sweep.write_rows_csv(rows, tmp_path / "s.csv")
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == ["loss", "k", "hq", "extra"]
    assert read == [
        {"loss": "logistic", "k": "", "hq": "0.5", "extra": ""},
        {"loss": "root", "k": "2.0", "hq": "", "extra": "3"},
    ]
    fixed = sweep.write_rows_csv(rows, tmp_path / "f.csv", columns=("k", "loss"))
    assert fixed.read_text().splitlines() == ["k,loss", ",logistic", "2.0,root"]


def test_group_stats_and_aggregate_are_the_mean_and_sample_std_over_seeds() -> None:
    rows = [
        {"loss": "root", "k": 2.0, "seed": 0, "m": 1.0, "n": 4},
        {"loss": "logistic", "k": None, "seed": 0, "m": 3.0},
        {"loss": "root", "k": 2.0, "seed": 1, "m": 2.5, "n": None},
        {"loss": "root", "k": 2.0, "seed": 2, "m": 7.0, "n": 6},
    ]
    stats = sweep.group_stats(rows, "m", ("loss", "k"))
    mean, std, n = stats[("root", 2.0)]
    assert n == 3 and mean == pytest.approx(statistics.mean([1.0, 2.5, 7.0]), abs=1e-15)
    assert std == pytest.approx(statistics.stdev([1.0, 2.5, 7.0]), abs=1e-15)
    assert stats[("logistic", None)] == (3.0, 0.0, 1)
    table = sweep.aggregate(rows, ("loss", "k"), ("m", "n"))
    assert [group for group, _ in table] == [("root", 2.0), ("logistic", None)]  # first-seen order
    assert table[0][1]["n"] == (5.0, pytest.approx(statistics.stdev([4, 6])), 2)  # None and missing left out
    assert table[1][1]["n"] is None
