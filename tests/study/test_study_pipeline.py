"""The real job (train, quantize, evaluate) on a tiny digits study: what the store holds afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import losslab
from losslab.study import StudyStore, parse_study, run_study

STUDY = {
    "name": "tiny-real",
    "train": {"dataset": "digits", "model": "small_cnn", "epochs": 1, "batch_size": 128},
    "grid": {"loss": ["ce", "root"]},
    "compress": {
        "calibration": {"samples": 32, "batch_size": 32},
        "methods": [{"method": "rtn", "bits": [8, 2]}, {"method": "gpfq", "bits": [3]}],
    },
}


@pytest.mark.slow
def test_a_tiny_real_study_stores_everything(tmp_path: Path) -> None:
    from losslab.train import evaluate_model, load_run
    from losslab.train.build import make_loaders

    outcome = run_study(parse_study(STUDY), tmp_path, progress=False)
    assert (outcome.completed, outcome.failed) == (2, [])
    with StudyStore.open(tmp_path) as store:
        runs, rows, epochs = store.train_runs(), store.compressions(), store.epochs()
        assert len(runs) == 2 and len(rows) == 6
        run = runs[0]
        model = load_run(tmp_path / run["run_dir"]).model
        layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
        test = make_loaders(load_run(tmp_path / run["run_dir"]).config, eval_batch_size=256).test
        assert run["float_top1"] == pytest.approx(evaluate_model(model, test)["top1"])
        assert run["eval_n"] == len(test.dataset)
        assert len(epochs[run["key"]]) == 1 and {"train/loss", "val/acc", "lr"} <= set(epochs[run["key"]][0])
        float_hists = store.weight_histograms(run["key"])
        assert [h.layer for h in float_hists] == list(layers)
        assert [sum(h.counts) for h in float_hists] == [m.weight.numel() for m in layers.values()]
        sqnr = {}
        for row in rows:
            assert row["drop_top1"] == pytest.approx(
                next(r["float_top1"] for r in runs if r["key"] == row["train_key"]) - row["top1"]
            )
            errors = store.layer_errors(row["key"])
            assert [e["name"] for e in errors] == list(layers)
            sqnr[(row["train_key"], row["label"], row["bits"])] = [e["sqnr_db"] for e in errors]
            assert row["summary"]["kind"] == "fake" and row["quant_time_s"] > 0
            if row["label"] == "rtn" and row["bits"] == 2:  # per-row asymmetric grid: at most 4 levels per row
                for h in store.weight_histograms(row["key"]):
                    assert h.stats["distinct"] <= 4 * layers[h.layer].weight.shape[0]
        for key in {r["key"] for r in runs}:
            assert all(a > b for a, b in zip(sqnr[(key, "rtn", 8)], sqnr[(key, "rtn", 2)]))
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(losslab.__file__).parent,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
        assert {(r["losslab_version"], r["git_commit"]) for r in runs + rows} == {(losslab.__version__, commit)}
