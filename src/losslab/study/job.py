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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losslab.study.records import (
    LATER_KEYS,
    PLACEMENT_KEYS,
    RUNNER_KEYS,
    CompressionRecord,
    JobResult,
    TrainRecord,
    WeightHistogram,
)
from losslab.study.spec import CompressionPoint, CompressSection

__all__ = [
    "PLACEMENT_KEYS",
    "CompressionRecord",
    "JobResult",
    "StudyJob",
    "TrainRecord",
    "WeightHistogram",
    "compression_key",
    "compression_setting",
    "provenance",
    "train_key",
]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(config: dict[str, Any]) -> str:
    """Deterministic id of a training point: a hash of its resolved TrainConfig minus runner/placement keys and
    minus later-added keys at their defaults (:data:`LATER_KEYS`, so older stores keep their ids)."""
    return _digest(
        {
            k: v
            for k, v in config.items()
            if k not in RUNNER_KEYS | PLACEMENT_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])
        }
    )


def compression_setting(section: CompressSection) -> dict[str, Any]:
    """The compression settings shared by every point of a study that change its results."""
    return {
        "calibration": section.calibration.model_dump(),
        "fold_bn": section.fold_bn,
        "skip": list(section.skip),
    }


#: Method options whose default changed after stores existed: method -> {option: its new default}. An omitted one
#: enters the key at the new default, so a result computed under the old default is never reused for the new one
#: (GPFQ's default grid became the per-channel ``asym`` grid; the seed's alphabet is now ``grid: gpfq``). Points
#: that name the option keep their ids.
CHANGED_DEFAULTS: dict[str, dict[str, Any]] = {"gpfq": {"grid": "asym"}}


def compression_key(train: str, point: CompressionPoint, setting: dict[str, Any]) -> str:
    """Deterministic id of one compression of one trained model (method, bits, options, calibration, ...)."""
    given = dict(point.options)
    changed = {k: v for k, v in CHANGED_DEFAULTS.get(point.method, {}).items() if k not in given}
    options = tuple(sorted({**given, **changed}.items())) if changed else point.options
    return _digest({"train": train, "method": point.method, "bits": point.bits, "options": options, "setting": setting})


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
    landscape: dict[str, Any] | None = None  # the study's landscape section, when this model still needs probing

    def compress_section(self) -> CompressSection:
        """The study's compression settings, parsed."""
        return CompressSection(**self.compress)


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
