"""The typed options of ``losslab study run``: where and how a study's jobs run (not what they are: that is the
study YAML, :mod:`losslab.study.spec`). The command's flags are generated from these fields
(:func:`losslab.cli.options.options_from_model`), bounds included. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StudyRunOptions"]


class StudyRunOptions(BaseModel):
    """Execution settings of one ``study run``."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Jobs in parallel (local process pool; on Ray, at most this many in flight). Default 1 locally.",
    )
    backend: Literal["local", "ray"] = Field("local", description="Run jobs here or on a Ray cluster.")
    ray_address: str | None = Field(
        None, description="Ray cluster address (e.g. auto or ray://head:10001); default: start a local Ray instance."
    )
    ray_cpus_per_job: float = Field(1.0, gt=0, le=4096, description="CPUs each Ray job reserves.")
    ray_gpus_per_job: float = Field(
        0.0, ge=0, le=64, description="GPUs each Ray job reserves (Ray hides GPUs from jobs that reserve none)."
    )
    download: bool = Field(False, description="Fetch missing data sets (before the first job) instead of failing.")

    @property
    def ray_resources(self) -> dict[str, float]:
        """What each Ray job reserves."""
        return {"num_cpus": self.ray_cpus_per_job, "num_gpus": self.ray_gpus_per_job}
