"""The study's landscape stage (stored, resumable) and the report's statistics (τ-b, bootstrap, granulated τ)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from losslab.errors import ConfigError
from losslab.report.landscape import bootstrap_tau, granulated_tau, kendall_tau
from losslab.study import StudyStore, parse_study, run_study


def test_kendall_tau_b_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 15).astype(float)
        y = x + rng.integers(-3, 4, 15)
        assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval() -> None:
    x = list(range(12))
    assert bootstrap_tau(x, [2 * v for v in x]) == (1.0, 1.0)  # every resample is perfectly concordant
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(size=40)
    low, high = bootstrap_tau(a, b)
    assert low < kendall_tau(a, b) < high and low < 0 < high  # independent data: the interval holds 0


def test_granulated_tau_by_hand() -> None:
    """Two options (lr, wd), two seeds. Along lr the probe orders the drop right in every group (τ = 1); along wd
    it is reversed in one group of two and right in the other (τ = 0 on average). Ψ = (1 + 0)/2."""
    options, x, y = [], [], []
    for seed in (0, 1):
        for lr in (0.1, 0.2):
            for wd in (0, 1):
                options.append({"lr": lr, "wd": wd, "seed": seed})
                x.append(lr * 10 + wd * (1 if seed == 0 else -1) * 0.1)
                y.append(lr * 10 + wd * 0.1)
    per_lr = 1.0
    per_wd = (1.0 + -1.0 + 1.0 + -1.0) / 4  # seed 0: concordant, seed 1: discordant, for both lr values
    assert granulated_tau(options, x, y) == pytest.approx((per_lr + per_wd) / 2)


def test_landscape_section_is_validated() -> None:
    base = {"name": "s", "train": {"epochs": 1}, "compress": {"methods": [{"method": "rtn", "bits": [4]}]}}
    with pytest.raises(ConfigError, match="unknown probe hessian"):
        parse_study({**base, "landscape": {"probes": ["eig", "hessian"]}})
    with pytest.raises(ConfigError, match=r"landscape\.loss"):
        parse_study({**base, "landscape": {"loss": "mse"}})
    with pytest.raises(ConfigError, match=r"unknown key 'landscape\.top'"):
        parse_study({**base, "landscape": {"top": 3}})


STUDY = {
    "name": "tiny-landscape",
    "train": {"dataset": "digits", "model": "small_cnn", "epochs": 1, "batch_size": 128},
    "grid": {"lr": [0.05, 0.2], "seed": [0, 1]},
    "compress": {"calibration": {"samples": 32, "batch_size": 32}, "methods": [{"method": "rtn", "bits": [4, 2]}]},
    "landscape": {"probes": ["eig", "kurtosis"], "samples": 128, "top_k": 1},
}


@pytest.mark.slow
def test_study_probes_each_model_once_and_reports(tmp_path: Path) -> None:
    from losslab.report import build_report
    from losslab.study.runner import plan_jobs

    spec = parse_study(STUDY)
    outcome = run_study(spec, tmp_path, progress=False)
    assert outcome.ok
    with StudyStore.open(tmp_path) as store:
        runs = store.train_runs()
        files = [tmp_path / r["run_dir"] / "landscape.json" for r in runs]
        assert len(files) == 4 and all(f.is_file() for f in files)
        assert all(json.loads(f.read_text())["samples"] == 128 for f in files)
        assert plan_jobs(spec, store, tmp_path)[0] == []  # nothing left: never probed again
        files[1].unlink()  # a lost result (or a study killed while probing): only the probe is planned
        jobs, _ = plan_jobs(spec, store, tmp_path)
        assert len(jobs) == 1 and not jobs[0].needs_training and jobs[0].points == () and jobs[0].landscape
        assert Path(jobs[0].run_dir) == files[1].parent.resolve()
    stamps = {f: f.stat().st_mtime_ns for f in files if f.is_file()}
    assert run_study(spec, tmp_path, progress=False).ok
    assert files[1].is_file() and all(f.stat().st_mtime_ns == t for f, t in stamps.items())

    report = build_report(tmp_path)
    md = (report.parent / "report.md").read_text()
    assert "## Landscape vs compression" in md
    rows = list(csv.DictReader((report.parent / "landscape.csv").open()))
    with StudyStore.open(tmp_path) as store:
        runs = {r["key"]: r for r in store.train_runs()}
        drops = [c for c in store.compressions() if c["bits"] == 2]
    top = [
        json.loads((tmp_path / runs[c["train_key"]]["run_dir"] / "landscape.json").read_text())["eigenvalues"][0]
        for c in drops
    ]
    want = kendalltau(top, [c["drop_top1"] for c in drops]).statistic
    row = next(r for r in rows if r["probe"] == "top eigenvalue" and r["bits"] == "2")
    assert float(row["tau"]) == pytest.approx(want, abs=1e-12) and int(row["n"]) == 4
