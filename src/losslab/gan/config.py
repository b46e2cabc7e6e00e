"""``GanConfig``: every option of a GAN training run (``losslab gan train``); the CLI's flags are generated from it.

cfg = GanConfig(data="ring", loss="rooted", k=2.0, epochs=20)
cfg = GanConfig.build({"data": "digits", "img_size": 32, "r1_gamma": 0.1})   # ConfigError on bad values

Batch size, Adam lr/betas, R1 γ and EMA decay left unset (None) take the defaults of the data kind: DCGAN's for
images (``IMAGE_DEFAULTS``), and for the 2-D mixtures ``TOY_DEFAULTS`` (Adam 1e-3, β (0, 0.9), R1 γ 1, EMA 0.99,
batch 128), with which both losses cover 8 of 8 ring modes in 1,560 steps (tests/gan/test_gan_ring_coverage.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

IMAGE_DEFAULTS: dict[str, float] = {
    "batch_size": 64,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "r1_gamma": 0.0,
    "ema_decay": 0.999,
}  # DCGAN (Radford et al. 2016)
TOY_DEFAULTS: dict[str, float] = {
    "batch_size": 128,
    "lr": 1e-3,
    "beta1": 0.0,
    "beta2": 0.9,
    "r1_gamma": 1.0,
    "ema_decay": 0.99,
}  # MLP pair on ring/grid: 8 of 8 ring modes for logistic and rooted k = 2, 4, 8 (docs/gan.md)


class GanConfig(BaseModel):
    """Data, networks, loss, optimiser (DCGAN's Adam), R1, EMA, evaluation and run-folder options."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str = Field(
        "ring", description="ring or grid (2-D Gaussian mixtures) or a losslab image data set (digits, cifar10, ...)."
    )
    img_size: int | None = Field(None, description="Image side for image data (power of two >= 8) [32 when unset].")
    data_dir: Path | None = Field(None, description="Folder holding image data sets (as in losslab train).")
    download: bool = Field(False, description="Download a missing image data set (needs network).")
    toy_samples: int = Field(10_000, ge=64, description="Training points drawn once from the 2-D mixture.")
    loss: Literal["logistic", "rooted"] = Field(
        "rooted", description="Non-saturating GAN loss: logistic (softplus) or rooted."
    )
    k: float = Field(2.0, gt=0, description="k of the rooted loss (the seed's kparam).")
    z_dim: int = Field(64, ge=1, description="Latent dimension.")
    width: int | None = Field(None, ge=1, description="DCGAN base channels [64] / MLP hidden width [128].")
    d_norm: bool = Field(True, description="BatchNorm in the DCGAN discriminator.")
    epochs: int = Field(20, ge=1, description="Passes over the training data.")
    batch_size: int | None = Field(None, ge=2, description="Batch size of both networks [64 images / 128 ring, grid].")
    lr: float | None = Field(None, gt=0, description="Adam learning rate [2e-4 images (DCGAN) / 1e-3 ring, grid].")
    beta1: float | None = Field(None, ge=0, lt=1, description="Adam beta1 [0.5 images (DCGAN) / 0 ring, grid].")
    beta2: float | None = Field(None, ge=0, lt=1, description="Adam beta2 [0.999 images / 0.9 ring, grid].")
    r1_gamma: float | None = Field(
        None, ge=0, description="R1 penalty (gamma/2)·||grad_x D(x)||² on reals; 0 = off [0 images / 1 ring, grid]."
    )
    ema_decay: float | None = Field(
        None, ge=0, lt=1, description="Generator EMA decay per step; samples/metrics use it [0.999 images / 0.99 toy]."
    )
    eval_samples: int = Field(0, ge=0, description="Samples for the final metrics [10000 toy, 1000 images when 0].")
    grid_samples: int = Field(64, ge=1, description="Samples in each epoch's PNG grid.")
    fid_weights: Path | None = Field(None, description="Local Inception-v3 FID weights; FID only when given.")
    metrics: bool = Field(True, description="Compute the final metrics into result.json.")
    seed: int = Field(0, description="Training seed (also of the toy data).")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Device kind (one device).")
    out_dir: Path = Field(Path("gan_runs"), description="Folder that receives run folders.")
    run_name: str | None = Field(None, description="Run folder name [derived from data, loss, k, seed].")
    resume: Path | None = Field(None, description="Run folder (or checkpoint) to continue.")
    overwrite: bool = Field(False, description="Replace an existing run folder.")
    progress: bool | None = Field(None, description="Progress bar [on when stderr is a terminal].")

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, values: Any) -> Any:
        """Fill the optimiser/R1/EMA options left unset (None) with the defaults of the data kind."""
        if not isinstance(values, dict):
            return values
        table = TOY_DEFAULTS if values.get("data", "ring") in ("ring", "grid") else IMAGE_DEFAULTS
        return {**values, **{key: value for key, value in table.items() if values.get(key) is None}}

    @model_validator(mode="after")
    def _check(self) -> GanConfig:
        if self.img_size is not None and self.data in ("ring", "grid"):
            raise ValueError("img_size applies to image data; the 2-D mixtures have none")
        return self

    @classmethod
    def build(cls, values: dict[str, Any]) -> GanConfig:
        """Validated config from ``values``; pydantic errors become one ConfigError naming the keys."""
        from losslab.train.config import config_error_from

        try:
            return cls(**values)
        except ValidationError as err:
            raise config_error_from(err, cls, "losslab gan train") from None

    @property
    def is_toy(self) -> bool:
        return self.data in ("ring", "grid")

    @property
    def net_width(self) -> int:
        return self.width or (128 if self.is_toy else 64)

    def default_run_name(self) -> str:
        loss = "logistic" if self.loss == "logistic" else f"rooted_k{self.k:g}"
        return f"{self.data}_{loss}_seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
