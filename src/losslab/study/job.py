"""What one study job is and what it returns: plain, picklable dataclasses shared by the runner and its backends.

A job is one training point: train it (unless its run is already stored), then compress the trained model with
every compression point not yet stored and evaluate each. The job function returns a :class:`JobResult`; the
runner writes it to the store in one transaction, so a killed study loses at most the jobs in flight::

    def my_job(job: StudyJob) -> JobResult: ...
    run_study(spec, out_dir, job_fn=my_job)      # the default job_fn trains and quantizes for real
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab.study.spec import RUNNER_KEYS, CompressionPoint, CompressSection

# Keys that say where data lives or how progress is shown; they do not change a training point's results.
PLACEMENT_KEYS = frozenset({"data_dir", "download", "num_workers", "logger"})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(config: dict[str, Any]) -> str:
    """Deterministic id of a training point: a hash of its resolved TrainConfig minus runner/placement keys."""
    return _digest({k: v for k, v in config.items() if k not in RUNNER_KEYS | PLACEMENT_KEYS})


def compression_setting(section: CompressSection) -> dict[str, Any]:
    """The compression settings shared by every point of a study that change its results."""
    return {
        "calibration": section.calibration.model_dump(),
        "fold_bn": section.fold_bn,
        "skip": list(section.skip),
    }


def compression_key(train: str, point: CompressionPoint, setting: dict[str, Any]) -> str:
    """Deterministic id of one compression of one trained model (method, bits, options, calibration, ...)."""
    return _digest(
        {"train": train, "method": point.method, "bits": point.bits, "options": point.options, "setting": setting}
    )


@dataclass(frozen=True)
class StudyJob:
    """One training point and the compression points still missing for it.

    ``needs_training`` is False when the run is stored and only new compression points remain; the job then
    loads the stored run from ``run_dir``. ``compress`` holds the study's compression section as a dict.
    """

    train_key: str
    config: dict[str, Any]
    run_dir: str
    needs_training: bool
    points: tuple[tuple[str, CompressionPoint], ...]
    compress: dict[str, Any]
    study: str

    def compress_section(self) -> CompressSection:
        """The study's compression settings, parsed."""
        return CompressSection(**self.compress)


@dataclass
class WeightHistogram:
    """A histogram of one layer's weights: ``counts[i]`` weights fall in ``[edges[i], edges[i+1])``.

    ``stats`` holds mean, std, min, max, absmax, kurtosis (excess) and the number of distinct values.
    """

    layer: str
    edges: list[float]
    counts: list[int]
    stats: dict[str, float]


@dataclass
class TrainRecord:
    """A finished training run and its float (uncompressed) test metrics (top1/top5 in percent, ce in nats)."""

    config: dict[str, Any]
    run_dir: str
    float_metrics: dict[str, float]
    best_val_acc: float | None
    num_params: int | None
    train_time_s: float
    eval_time_s: float
    epochs: list[dict[str, Any]]
    histograms: list[WeightHistogram] = field(default_factory=list)


@dataclass
class CompressionRecord:
    """One compressed model: its test metrics, per-layer error rows, summary, weight histograms and timings."""

    key: str
    point: CompressionPoint
    setting: dict[str, Any]
    metrics: dict[str, float]
    summary: dict[str, Any]
    layers: list[dict[str, Any]]
    quant_time_s: float
    eval_time_s: float
    histograms: list[WeightHistogram] = field(default_factory=list)


@dataclass
class JobResult:
    """What a job returns: the training record (None if it was already stored) and its compression records."""

    train_key: str
    train: TrainRecord | None
    compressions: list[CompressionRecord]
    provenance: dict[str, str]


def provenance() -> dict[str, str]:
    """The losslab version, git commit (``unknown`` outside a git checkout) and host that produced a result."""
    import losslab

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(losslab.__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"losslab_version": losslab.__version__, "git_commit": commit, "host": socket.gethostname()}
