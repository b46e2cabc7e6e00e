"""The translation run's config (one pydantic model; every field is a ``losslab translate train`` flag) and the
model-size presets. Imports only pydantic, so the CLI can build its flags without importing torch::

    cfg = TranslateConfig.build(arch="toy", rank_scale=0.5, spectral=True)   # ConfigError on bad values
    SEED_ALIASES["attention_spectral_qk"]                                      # ['--spectral-quekey']
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESETS: dict[str, dict[str, int | float | bool]] = {
    # fairseq's transformer_iwslt_de_en (the IWSLT14 baseline of FNL's Transformer experiments)
    "transformer_iwslt_de_en": dict(d_model=512, heads=4, ffn_dim=1024, encoder_layers=6, decoder_layers=6),
    # the offline toy pair
    "toy": dict(d_model=64, heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2, dropout=0.0),
}

# seed (FNL Transformer-PyTorch) spellings of the config's flags
SEED_ALIASES: dict[str, list[str]] = {
    "frobenius_decay": ["--wd2fd"],
    "attention_spectral_qk": ["--spectral-quekey"],
    "attention_spectral_ov": ["--spectral-outval"],
    "attention_fd_qk": ["--wd2fd-quekey"],
    "attention_fd_ov": ["--wd2fd-outval"],
    "gradient_clip": ["--clip-norm"],
    "max_updates": ["--max-update"],
}


class TranslateConfig(BaseModel):
    """Everything a translation run needs; every field is a ``losslab translate train`` flag."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field("transformer_iwslt_de_en", description=f"Model sizes preset: {', '.join(PRESETS)}.")
    dropout: float | None = Field(None, description="Dropout (default: the preset's; fairseq IWSLT 0.3, FNL 0.2).")
    normalize_before: bool = Field(False, description="Pre-norm layers (fairseq default: post-norm).")
    vocab_size: int = Field(10000, description="Joint BPE vocabulary size (fairseq's IWSLT14 recipe: 10000).")
    loss: Literal["ce", "root", "root_convex"] = Field("ce", description="Token loss (losslab.lm.token_loss).")
    k: float = Field(5.0, description="Rooted-loss k.")
    m: float = Field(5.0, description="Rooted-loss m.")
    label_smoothing: float | None = Field(None, description="fairseq label smoothing (default 0.1 for ce, 0 else).")
    optimizer: Literal["adam", "nag"] = Field("adam", description="adam (betas 0.9, 0.98; decoupled WD) or nag.")
    lr: float = Field(5e-4, description="Peak learning rate (inverse-sqrt schedule after warmup).")
    warmup_updates: int = Field(4000, description="Linear warmup steps from warmup_init_lr to lr.")
    warmup_init_lr: float = Field(1e-7, description="Learning rate at step 0.")
    weight_decay: float = Field(1e-4, description="Weight decay (also λ of the Frobenius decays).")
    gradient_clip: float | None = Field(None, description="Clip the gradient norm (fairseq --clip-norm).")
    max_tokens: int = Field(4096, description="Tokens per batch (fairseq --max-tokens).")
    max_epochs: int = Field(50, description="Stop after this many epochs.")
    max_updates: int | None = Field(None, description="Stop after this many updates.")
    rank_scale: float | None = Field(None, description="Factorize the FFN Linears at this rank scale.")
    spectral: bool = Field(False, description="Spectral init of the factorized layers.")
    frobenius_decay: bool = Field(False, description="Frobenius decay of the factorized layers.")
    attention_spectral_qk: bool = Field(False, description="Per-head spectral rebalance of Q_hᵀK_h.")
    attention_spectral_ov: bool = Field(False, description="Per-head spectral rebalance of O_hV_h.")
    attention_fd_qk: bool = Field(False, description="Per-head Frobenius decay of Q_hᵀK_h.")
    attention_fd_ov: bool = Field(False, description="Per-head Frobenius decay of O_hV_h.")
    beam: int = Field(5, description="Beam size for BLEU.")
    lenpen: float = Field(1.0, description="Length penalty: score / length**lenpen.")
    eval_batch_size: int = Field(128, description="Sentences per generation batch.")
    seed: int = Field(0, description="Training seed.")

    @model_validator(mode="after")
    def _check(self) -> TranslateConfig:
        if self.arch not in PRESETS:
            raise ValueError(f"arch {self.arch!r} is unknown; choose one of: {', '.join(PRESETS)}")
        if self.loss != "ce" and self.label_smoothing:
            raise ValueError(f"label_smoothing applies to loss=ce only; with loss={self.loss} set it to 0")
        if (self.spectral or self.frobenius_decay) and self.rank_scale is None:
            raise ValueError("spectral / frobenius_decay act on factorized layers: give rank_scale (--rank-scale)")
        return self

    @classmethod
    def build(cls, **values: object) -> TranslateConfig:
        """Validated config; a ConfigError naming the key and the problem on bad values."""
        from losslab.train.config import config_error_from

        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error_from(exc, cls, "losslab translate train") from None

    @property
    def smoothing(self) -> float:
        return (0.1 if self.loss == "ce" else 0.0) if self.label_smoothing is None else self.label_smoothing
