"""The record types of a study's results: what a job returns and what the report reads back from the store.

Plain dataclasses with no heavy imports, so :mod:`losslab.report` can use them without importing the study
runner (process pools, Ray, training); :mod:`losslab.study.job` re-exports them for the runner::

    from losslab.study.records import CompressionRecord, JobResult, TrainRecord, WeightHistogram
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from losslab.study.spec import CompressionPoint

# TrainConfig keys that say where a run goes or how it is shown; they are not part of a training point.
RUNNER_KEYS = frozenset({"out_dir", "run_name", "resume", "overwrite", "progress"})
# Keys that say where data lives or how progress is shown; they do not change a training point's results.
PLACEMENT_KEYS = frozenset({"data_dir", "download", "num_workers", "logger", "threads", "engine"})
# TrainConfig keys added after the first store format: a training point's id leaves them out while they hold their
# default, so the results of stores made before they existed are found (not trained again) after an upgrade. A new
# config key belongs here with its default (tests/study check that every key outside the first format is listed).
LATER_KEYS: dict[str, object] = {
    "loader": "auto",
    "cutout": 0,
    "reprob": 0.0,
    "remode": "const",
    "recount": 1,
    "val_every": 1,
    "compile": False,
    "compile_mode": "default",
    "channels_last": None,
    "tf32": True,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "model_ema": False,
    "model_ema_decay": 0.9998,
    "model_ema_warmup": False,
    "drop": 0.0,
    "drop_path": 0.0,
    "initial_checkpoint": None,
}


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
