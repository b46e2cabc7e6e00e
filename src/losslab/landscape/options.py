"""The typed options of ``losslab landscape RUN``: which probes, on which probe set, with which loss and radii.

The command's flags are generated from :class:`LandscapeOptions` (:func:`losslab.cli.options.options_from_model`:
help, defaults, bounds and choices from the fields; ``seed``, ``device`` and ``overwrite`` are the shared concepts of
``losslab.cli.groups``). Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LandscapeOptions"]


class LandscapeOptions(BaseModel):
    """One ``losslab landscape RUN`` (the ``--json`` output and ``--progress`` are the commands' shared options)."""

    model_config = ConfigDict(extra="forbid")

    probes: str | None = Field(
        None,
        description="Comma-separated: eig,trace,density,layers,sharpness,surface,kurtosis, or all "
        "[default: all but layers].",
    )
    top_k: int = Field(3, ge=1, le=100, description="How many top eigenvalues (Lanczos, at most 100 steps).")
    smallest: bool = Field(False, description="Also the top-k smallest (most negative) eigenvalues.")
    samples: str | None = Field(None, description="Probe-set images: N or all [default: 2048, or the whole split].")
    split: Literal["train", "val", "test"] = Field("train", description="The split the probe set is drawn from.")
    probe_loss: Literal["run", "ce"] = Field(
        "run", description="run: the run's training objective; ce: plain cross entropy (compare objectives)."
    )
    layer: str | None = Field(None, description="Probe only parameters whose name contains this (default: all).")
    seed: int = Field(0, description="of the probe set and of every probe")
    rho: float = Field(0.05, gt=0, le=1e3, description="Sharpness radius (plain).")
    adaptive_rho: float = Field(0.5, gt=0, le=1e3, description="Sharpness radius (adaptive).")
    batch_size: int = Field(
        256, ge=1, le=1_000_000, description="Batch size of the passes (the answer does not depend on it)."
    )
    graph_budget_gib: float = Field(
        2.0,
        ge=0,
        le=1e6,
        description="GiB of first-order gradient graphs kept across Hessian-vector products (each product after "
        "the first is then one backward pass); 0 recomputes every product.",
    )
    device: str | None = Field(None, description="default: cuda if available")
    save: bool = Field(True, description="Write landscape.json and the figures into the run folder.")
    overwrite: bool = Field(False, description="a stored result or --json file")
