"""``GanConfig``: every option of a GAN training run (``losslab gan train``); the CLI's flags are generated from it.

cfg = GanConfig(data="ring", loss="root", k=2.0, epochs=20)
cfg = GanConfig.build({"data": "digits", "img_size": 32, "r1_gamma": 0.1})   # ConfigError on bad values

Batch size, Adam lr/betas and R1 γ left unset (None) take the defaults of the data kind: DCGAN's for images
(``IMAGE_DEFAULTS``), and for the 2-D mixtures ``TOY_DEFAULTS`` (Adam 1e-3, β (0, 0.9), R1 γ 1, batch 128), with
which both losses cover 8 of 8 ring modes in 1,560 steps (tests/gan/test_gan_ring_coverage.py). The generator EMA
follows StyleGAN2-ADA (``ema_kimg``, ``ema_rampup``; :func:`losslab.gan.train.ema_beta`) unless ``ema_decay`` fixes
the per-step decay. The loss names are the objective registry's: ``root`` (aliases ``rooted``, ``rlo``) and
``logistic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from losslab.train.config import SWITCH, CommandConfig

IMAGE_DEFAULTS: dict[str, float] = {
    "batch_size": 64,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "r1_gamma": 0.0,
}  # DCGAN (Radford et al. 2016)
TOY_DEFAULTS: dict[str, float] = {
    "batch_size": 128,
    "lr": 1e-3,
    "beta1": 0.0,
    "beta2": 0.9,
    "r1_gamma": 1.0,
}  # MLP pair on ring/grid: 8 of 8 ring modes for logistic and rooted k = 2, 4, 8 (docs/gan.md)


GAN_LOSSES = ("logistic", "root")
MAX_SAMPLES = 10_000_000  # toy points, evaluation samples: beyond this the 2-D sets and metrics stop being sensible
MAX_WIDTH = 4096


class GanConfig(BaseModel):
    """Data, networks, loss, optimiser (DCGAN's Adam), R1, EMA, evaluation and run-folder options.

    Every number has a range and must be finite (``allow_inf_nan=False``): ``--lr inf`` is refused before any work.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    data: str = Field(
        "ring", description="ring or grid (2-D Gaussian mixtures) or a losslab image data set (digits, cifar10, ...)."
    )
    img_size: int | None = Field(
        None, ge=8, le=1024, description="Image side for image data (power of two >= 8) [32 when unset]."
    )
    data_dir: Path | None = Field(None, description="Folder holding image data sets (as in losslab train).")
    download: bool = Field(False, description="Download a missing image data set (needs network).")
    toy_samples: int = Field(
        10_000, ge=64, le=MAX_SAMPLES, description="Training points drawn once from the 2-D mixture."
    )
    loss: str = Field(
        "root",
        json_schema_extra={"losses": ["logistic", "root"]},
        description="Non-saturating GAN loss: logistic (softplus) or root (the rooted loss; alias rooted).",
    )
    k: float = Field(2.0, gt=0, le=1e6, description="k of the rooted loss (the seed's kparam).")
    z_dim: int = Field(64, ge=1, le=MAX_WIDTH, description="Latent dimension.")
    width: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="DCGAN base channels [64] / MLP hidden width [128]."
    )
    d_norm: bool = Field(True, description="BatchNorm in the DCGAN discriminator.")
    epochs: int = Field(20, ge=1, le=100_000, description="Passes over the training data.")
    batch_size: int | None = Field(
        None, ge=2, le=65_536, description="Batch size of both networks [64 images / 128 ring, grid]."
    )
    lr: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate [2e-4 images (DCGAN) / 1e-3 ring, grid]."
    )
    beta1: float | None = Field(None, ge=0, lt=1, description="Adam beta1 [0.5 images (DCGAN) / 0 ring, grid].")
    beta2: float | None = Field(None, ge=0, lt=1, description="Adam beta2 [0.999 images / 0.9 ring, grid].")
    r1_gamma: float | None = Field(
        None,
        ge=0,
        le=1e6,
        description="R1 penalty (gamma/2)·||grad_x D(x)||² on reals; 0 = off [0 images / 1 ring, grid].",
    )
    ema_kimg: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="Generator EMA half-life in thousands of images (StyleGAN2-ADA) [batch_size·10/32].",
    )
    ema_rampup: float = Field(
        0.05,
        ge=0,
        le=1,
        description="EMA half-life at most this share of the images seen (StyleGAN2-ADA's ramp); 0 = no ramp.",
    )
    ema_decay: float | None = Field(
        None, ge=0, lt=1, description="Fixed per-step EMA decay instead of the ramp (kimg and rampup then unused)."
    )
    eval_samples: int = Field(
        0, ge=0, le=MAX_SAMPLES, description="Samples for the final metrics [10000 toy, 1000 images when 0]."
    )
    grid_samples: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Samples in each epoch's PNG [64 in the image grid / 2000 in the 2-D scatter].",
    )
    fid_weights: Path | None = Field(None, description="Local Inception-v3 FID weights; FID only when given.")
    metrics: bool = Field(True, description="Compute the final metrics into result.json.")
    seed: int = Field(0, ge=0, lt=2**63, description="Training seed (also of the toy data).")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Device kind (one device).")
    out_dir: Path = Field(Path("gan_runs"), description="Folder that receives run folders.")
    run_name: str | None = Field(None, description="Run folder name [derived from data, loss, k, seed].")
    resume: Path | None = Field(None, description="Run folder (or checkpoint) to continue.")
    overwrite: bool = Field(False, description="Replace an existing run folder.")
    progress: bool | None = Field(
        None, description="Progress on stderr [a bar when stderr is a terminal, else one line per epoch]."
    )

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, values: Any) -> Any:
        """Fill the optimiser/R1/EMA options left unset (None) with the defaults of the data kind."""
        if not isinstance(values, dict):
            return values
        table = TOY_DEFAULTS if values.get("data", "ring") in ("ring", "grid") else IMAGE_DEFAULTS
        return {**values, **{key: value for key, value in table.items() if values.get(key) is None}}

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_name(cls, value: Any) -> Any:
        """The canonical loss name: ``logistic``, or ``root`` for any name the objective registry resolves to it."""
        if value in GAN_LOSSES or not isinstance(value, str):
            return value
        from losslab.objectives.registry import OBJECTIVES

        if value in OBJECTIVES and OBJECTIVES.resolve(value) == "root":
            return "root"
        raise ValueError(f"choose one of {', '.join(GAN_LOSSES)} (aliases of root: rooted, rlo)")

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
        loss = "logistic" if self.loss == "logistic" else f"rooted_k{self.k:g}"  # folder label kept from before
        return f"{self.data}_{loss}_seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class GanSweepOptions(CommandConfig):
    """The sweep's own options (``losslab gan sweep``; the shared settings are :class:`GanConfig`'s): the grid of k
    and seeds, which a ``--config`` file may hold under ``sweep:`` and the flags override, and the logistic
    reference runs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    COMMAND: ClassVar[str] = "losslab gan sweep"

    config: str | None = Field(None, description="YAML of GanConfig keys + sweep: {k, seeds} (rlo_gan).")
    k: list[Annotated[float, Field(gt=0, le=1e6)]] = Field([2.0, 4.0, 8.0], description="a comma list of k values")
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field([0, 1, 2], description="Training seeds.")
    no_logistic: bool = Field(False, description="Leave out the logistic reference runs.", json_schema_extra=SWITCH)
