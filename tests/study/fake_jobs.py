"""Fast synthetic study jobs for runner/store/report tests: deterministic numbers, no training.

``fake_job`` returns a JobResult whose values follow closed forms of the config, so tests can check what the
store and the report hold: float top-1 = 90 + seed + 10·lr, compressed top-1 = float − 8/bits, drop = 8/bits.
``LOSSLAB_FAKE_JOB_LOG`` (a file path) gets one line ``train_key needs_training n_points pid`` per job run,
``LOSSLAB_FAKE_JOB_SLEEP`` seconds are slept per job (for kill tests), and jobs whose loss equals
``LOSSLAB_FAKE_JOB_FAIL_LOSS`` raise.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from losslab.study.job import CompressionRecord, JobResult, StudyJob, TrainRecord, WeightHistogram

EPOCHS = 3
LAYERS = ("conv1", "fc")


def float_top1(config: dict) -> float:
    return 90.0 + config["seed"] + 10.0 * config["lr"]


def quant_top1(config: dict, bits: int) -> float:
    return float_top1(config) - 8.0 / bits


def _hist(layer: str, seed: int, levels: int | None) -> WeightHistogram:
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 0.1) for _ in range(500)]
    if levels is not None:
        step = 0.6 / (levels - 1)
        values = [round((max(-0.3, min(0.3, v)) + 0.3) / step) * step - 0.3 for v in values]
    low, high = min(values), max(values)
    bins = 16
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    edges = [low + i * width for i in range(bins + 1)]
    return WeightHistogram(layer, edges, counts, {"mean": sum(values) / len(values), "distinct": len(set(values))})


def fake_job(job: StudyJob) -> JobResult:
    log = os.environ.get("LOSSLAB_FAKE_JOB_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{job.train_key} {int(job.needs_training)} {len(job.points)} {os.getpid()}\n")
    time.sleep(float(os.environ.get("LOSSLAB_FAKE_JOB_SLEEP", "0")))
    cfg = job.config
    if cfg.get("loss") == os.environ.get("LOSSLAB_FAKE_JOB_FAIL_LOSS"):
        raise RuntimeError("synthetic failure")
    fp = float_top1(cfg)
    train = None
    if job.needs_training:  # a stand-in run folder: the runner retrains a stored run whose checkpoints are gone
        (Path(job.run_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (Path(job.run_dir) / "checkpoints" / "best.ckpt").touch()
        epochs = [
            {
                "epoch": e,
                "train/loss": 2.0 / (e + 1) + cfg["lr"],
                "val/acc": fp - 5 + e,
                "val/ce": 1.0 / (e + 1),
                "val_logits/norm": 3.0 + e,
                "val_logits/mean": 0.1,
                "val_logits/max": 2.0 + e,
                "val_logits/var": 1.0,
            }
            for e in range(EPOCHS)
        ]
        train = TrainRecord(
            cfg,
            job.run_dir,
            {"top1": fp, "top5": 100.0, "ce": 0.3, "n": 100},
            fp - 1,
            1000,
            1.5,
            0.1,
            epochs,
            [_hist(n, i, None) for i, n in enumerate(LAYERS)],
        )
    records = []
    for key, point in job.points:
        top1 = quant_top1(cfg, point.bits)
        records.append(
            CompressionRecord(
                key,
                point,
                {"calibration": {}},
                {"top1": top1, "top5": 99.0, "ce": 0.4, "n": 100},
                {"avg_bits_per_weight": point.bits + 0.25, "mean_sqnr_db": 6.02 * point.bits},
                [{"name": n, "bits": point.bits, "sqnr_db": 6.02 * point.bits} for n in LAYERS],
                0.2,
                0.05,
                [_hist(n, i, 2**point.bits) for i, n in enumerate(LAYERS)],
            )
        )
    return JobResult(job.train_key, train, records, {"losslab_version": "test", "git_commit": "abc", "host": "h"})
