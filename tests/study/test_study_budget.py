"""`budget:` as a compression axis of a study: the job stores one record per budget within its bits, the report
draws the frontier per training variant, and bad entries fail when the file is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from losslab.errors import ConfigError
from losslab.study import StudyStore, parse_study, run_study

STUDY = {
    "name": "tiny-budget",
    "train": {"dataset": "digits", "model": "small_cnn", "epochs": 1, "batch_size": 128},
    "grid": {"loss": ["ce", "root"]},
    "compress": {
        "calibration": {"samples": 32, "batch_size": 32},
        "methods": [{"method": "rtn", "bits": [8, 3, 2]}],
        "budget": [{"method": "rtn", "budgets": [2.5, 3.5], "bits_choices": [2, 3, 8]}],
    },
}


@pytest.mark.slow
def test_budget_axis_is_stored_and_drawn(tmp_path: Path) -> None:
    from losslab.report import build_report

    outcome = run_study(parse_study(STUDY), tmp_path, progress=False)
    assert (outcome.completed, outcome.failed) == (2, [])
    with StudyStore.open(tmp_path) as store:
        rows = [r for r in store.compressions() if "budget" in r["options"]]
    assert sorted(r["options"]["budget"] for r in rows) == [2.5, 2.5, 3.5, 3.5]
    for row in rows:
        summary = row["summary"]
        assert summary["avg_bits_per_weight"] <= row["options"]["budget"]
        assert summary["stored_bits"] <= row["options"]["budget"] * summary["quantized_weights"]
        assert set(summary["allocation"].values()) <= {2, 3, 8} and row["label"] == "rtn budget"
    report = build_report(tmp_path)
    assert (report.parent / "figures" / "budget_frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "Accuracy vs storage under a budget" in report.read_text()


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"method": "rtn", "budgets": [3], "sensitivity": "nope"}, "--sensitivity 'nope' is not known"),
        ({"method": "rtn", "budgets": [3], "bits_choices": [4]}, "at least two distinct widths"),
        ({"method": "rtn", "budgets": [-1]}, "positive stored bits"),
        ({"method": "rtn", "budgets": [3], "solver": "lp"}, "solver='lp' is not known"),
    ],
)
def test_bad_budget_entries_fail_when_read(entry: dict, fragment: str) -> None:
    study = {**STUDY, "compress": {**STUDY["compress"], "budget": [entry]}}
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        parse_study(study)
