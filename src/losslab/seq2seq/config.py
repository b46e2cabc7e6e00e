"""The translation run's config (one pydantic model; every field is a ``losslab translate train`` flag), the model-size
presets, and the typed options of the ``translate`` commands beside the config (run folder and device, data source,
``eval`` and ``demo``), whose fields are those commands' flags too. Imports only pydantic (and the shared precision
names), so the CLI can build its flags without importing torch::

    cfg = TranslateConfig.build(dict(arch="toy", rank_scale=0.5, spectral=True))   # ConfigError on bad values
    SEED_ALIASES["attention_spectral_qk"]                                      # ['--spectral-quekey']
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from losslab.limits import MAX_VOCAB
from losslab.train.config import SWITCH, CommandConfig, PrecisionName

MAX_BEAM = 1000
Beam = Annotated[int, Field(ge=1, le=MAX_BEAM)]
LengthPenalty = Annotated[float, Field(ge=0, le=10)]
RankScale = Annotated[float, Field(gt=0, le=1)]

PRESETS: dict[str, dict[str, int | float | bool | str]] = {
    # fairseq's transformer_iwslt_de_en (post-norm, sinusoidal positions, tied embeddings)
    "transformer_iwslt_de_en": dict(d_model=512, heads=4, ffn_dim=1024, encoder_layers=6, decoder_layers=6),
    # the FNL seed's transformer_small (fnl_paper Transformer-PyTorch, fairseq/models/transformer.py): d 256,
    # FFN 1024, 4 heads, 2+2 layers, pre-norm with a final norm, learned positions (1024 rows per side), untied
    # embeddings and an output Linear with bias, bias-free attention/FFN projections, no √d embedding scale,
    # U(-0.1, 0.1) / N(0, 0.1) init, dropout 0.1
    "transformer_small": dict(
        d_model=256,
        heads=4,
        ffn_dim=1024,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.1,
        normalize_before=True,
        learned_positions=True,
        tie_embeddings=False,
        bias=False,
        embed_scale=False,
        init="fnl",
    ),
    # the offline toy pair
    "toy": dict(d_model=64, heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2, dropout=0.0),
}


def fnl_attention_dim(d_model: int, heads: int, rank_scale: float) -> int:
    """FNL's attention width under ``--rank-scale s``: each head shrinks to int(s·d/H), so H·int(s·d/H).

    The seed's ``MultiheadAttention`` (fnl_paper, Transformer-PyTorch): ``key_dim = int(rank_scale * key_depth /
    num_heads) * num_heads``. Refused when a head would have no dimension left.
    """
    from losslab.errors import ConfigError

    head = int(rank_scale * d_model / heads)
    if head < 1:
        raise ConfigError(
            f"rank_scale={rank_scale:g} leaves the {heads} heads of width d={d_model} with int(s·d/H)=0 dimensions; "
            f"use rank_scale >= {heads / d_model:g}"
        )
    return head * heads


# seed (FNL Transformer-PyTorch) spellings of the config's flags
SEED_ALIASES: dict[str, list[str]] = {
    "frobenius_decay": ["--wd2fd"],
    "attention_spectral_qk": ["--spectral-quekey"],
    "attention_spectral_ov": ["--spectral-outval"],
    "attention_fd_qk": ["--wd2fd-quekey"],
    "attention_fd_ov": ["--wd2fd-outval"],
    "gradient_clip": ["--clip-norm"],
    "max_updates": ["--max-update"],
    "max_epochs": ["--max-epoch"],
}

# The seed's other fairseq training flags (fnl_paper Transformer-PyTorch, fairseq/options.py): flag -> help text.
# :func:`fairseq_overrides` maps each to config values or refuses it with the losslab spelling.
FAIRSEQ_FLAGS: dict[str, str] = {
    "--criterion": "fairseq criterion: label_smoothed_cross_entropy (loss ce, --label-smoothing) or cross_entropy "
    "(loss ce, no smoothing).",
    "--lr-scheduler": "fairseq schedule: only inverse_sqrt (losslab's schedule) is accepted.",
    "--momentum": "fairseq NAG momentum: only 0.99 (losslab's nag) is accepted.",
    "--save-dir": "Refused: use --out-dir.",
    "--device-id": "Refused: use --accelerator.",
    "--distributed-world-size": "fairseq GPU count: only 1 is accepted (losslab translate trains on one device per "
    "process; start N processes with torchrun --nproc_per_node N).",
    "--no-epoch-checkpoints": "Accepted; losslab keeps only the last checkpoint.",
}


def fairseq_overrides(given: dict[str, str | bool | None]) -> dict[str, object]:
    """Config values for the seed's fairseq flags the user typed (keys: flag names without ``--``, ``_`` for
    ``-``); a :class:`~losslab.errors.ConfigError` naming losslab's spelling for those losslab does not run."""
    from losslab.errors import ConfigError

    values: dict[str, object] = {}
    criterion = given.get("criterion")
    if criterion is not None:
        if criterion not in ("label_smoothed_cross_entropy", "cross_entropy"):
            raise ConfigError(
                f"--criterion {criterion}: losslab runs label_smoothed_cross_entropy or cross_entropy (as --loss ce); "
                "for the rooted losses use --loss root or --loss root_convex"
            )
        values["loss"] = "ce"
        if criterion == "cross_entropy":
            values["label_smoothing"] = 0.0
    refusals = {
        "lr_scheduler": ("inverse_sqrt", "losslab translate uses the inverse_sqrt schedule only; drop the flag"),
        "momentum": ("0.99", "losslab's nag uses momentum 0.99 only; drop the flag"),
        "distributed_world_size": (
            "1",
            "losslab translate trains on one device per process; drop the flag and start N processes with "
            "torchrun --nproc_per_node N",
        ),
    }
    for key, (allowed, fix) in refusals.items():
        value = given.get(key)
        same_number = _number(value) is not None and _number(value) == _number(allowed)
        if value is not None and str(value) != allowed and not same_number:
            raise ConfigError(f"--{key.replace('_', '-')} {value}: {fix}")
    if given.get("save_dir") is not None:
        raise ConfigError(f"--save-dir {given['save_dir']}: losslab names the run folder with --out-dir")
    if given.get("device_id") is not None:
        raise ConfigError(f"--device-id {given['device_id']}: choose the device with --accelerator (cpu, gpu)")
    return values


def check_seed_frobenius_decay(args: list[str]) -> None:
    """Refuse the seed's ``--frobenius-decay FLOAT`` (a coefficient there; a switch in losslab, λ = weight decay)."""
    from losslab.errors import ConfigError

    for flag, value in itertools.pairwise(args):
        if flag == "--frobenius-decay" and _number(value) is not None:
            raise ConfigError(
                f"--frobenius-decay {value}: in losslab --frobenius-decay is a switch and its λ is --weight-decay; "
                f"pass --frobenius-decay --weight-decay {value} (the seed's --wd2fd)"
            )


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class TranslateConfig(CommandConfig):
    """Everything a translation run needs; every field is a ``losslab translate train`` flag."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    COMMAND: ClassVar[str] = "losslab translate train"

    arch: str = Field("transformer_iwslt_de_en", description=f"Model sizes preset: {', '.join(PRESETS)}.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Dropout (default: the preset's; fairseq IWSLT 0.3, FNL seed 0.1)."
    )
    normalize_before: bool | None = Field(None, description="Pre-norm layers (default: the preset's).")
    vocab_size: int = Field(
        10000, ge=8, le=MAX_VOCAB, description="Joint BPE vocabulary size (fairseq's IWSLT14 recipe: 10000)."
    )
    loss: Literal["ce", "root", "root_convex"] = Field("ce", description="Token loss (losslab.objectives.token).")
    k: float = Field(5.0, gt=0.0, description="Rooted-loss k.")
    m: float = Field(5.0, gt=0.0, description="Rooted-loss m.")
    label_smoothing: float | None = Field(
        None, ge=0.0, lt=1.0, description="fairseq label smoothing (default 0.1 for ce, 0 else)."
    )
    optimizer: Literal["adam", "nag"] = Field("adam", description="adam (betas 0.9, 0.98; decoupled WD) or nag.")
    lr: float = Field(5e-4, gt=0.0, le=10.0, description="Peak learning rate (inverse-sqrt schedule after warmup).")
    warmup_updates: int = Field(4000, ge=0, description="Linear warmup steps from warmup_init_lr to lr.")
    warmup_init_lr: float = Field(1e-7, ge=0.0, le=10.0, description="Learning rate at step 0.")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="Weight decay (also λ of the Frobenius decays).")
    gradient_clip: float | None = Field(None, gt=0.0, description="Clip the gradient norm (fairseq --clip-norm).")
    max_tokens: int = Field(4096, ge=16, le=10_000_000, description="Tokens per batch (fairseq --max-tokens).")
    max_epochs: int = Field(50, ge=1, description="Stop after this many epochs.")
    max_updates: int | None = Field(None, ge=1, description="Stop after this many updates.")
    rank_scale: RankScale | None = Field(
        None,
        description="FNL's --rank-scale s: factorize the FFN Linears, the token and position embeddings and the "
        "output projection at rank round(s·min(m, n)) and shrink each attention head to int(s·d/H) (s = 1: dense).",
    )
    ffn_rank_scale: float | None = Field(
        None, gt=0.0, le=16.0, description="Factorize only the FFN Linears at this rank scale (attention and "
        "embeddings dense; s > 1 over-parameterizes); an alternative to rank_scale."
    )  # fmt: skip
    spectral: bool = Field(False, description="Spectral init of the factorized layers.")
    frobenius_decay: bool = Field(False, description="Frobenius decay of the factorized layers.")
    attention_spectral_qk: bool = Field(False, description="Per-head spectral rebalance of Q_hᵀK_h.")
    attention_spectral_ov: bool = Field(False, description="Per-head spectral rebalance of O_hV_h.")
    attention_fd_qk: bool = Field(False, description="Per-head Frobenius decay of Q_hᵀK_h.")
    attention_fd_ov: bool = Field(False, description="Per-head Frobenius decay of O_hV_h.")
    beam: Beam = Field(5, description="Beam size for BLEU.")
    lenpen: LengthPenalty = Field(1.0, description="Length penalty: score / length**lenpen.")
    eval_batch_size: int = Field(128, ge=1, le=100_000, description="Sentences per generation batch.")
    precision: PrecisionName = Field(
        "32", description="Numeric precision: 32, bf16-mixed (autocast), 16-mixed (GPU, with loss scaling)."
    )
    model_ema: bool = Field(
        False, description="Keep an exponential moving average of the weights; the EMA weights are validated, "
        "tested and saved (the raw ones are kept for a resume)."
    )  # fmt: skip
    model_ema_decay: float = Field(0.9998, gt=0, lt=1, description="EMA decay per update.")
    model_ema_warmup: bool = Field(False, description="timm's EMA warmup (decay grows with the update count).")
    seed: int = Field(0, ge=0, description="Training seed.")

    @model_validator(mode="after")
    def _check(self) -> TranslateConfig:
        if self.arch not in PRESETS:
            raise ValueError(f"arch {self.arch!r} is unknown; choose one of: {', '.join(PRESETS)}")
        if self.loss != "ce" and self.label_smoothing:
            raise ValueError(f"label_smoothing applies to loss=ce only; with loss={self.loss} set it to 0")
        if self.rank_scale is not None and self.rank_scale < 1:
            sizes = PRESETS[self.arch]
            fnl_attention_dim(int(sizes["d_model"]), int(sizes["heads"]), self.rank_scale)
        if self.rank_scale is not None and self.ffn_rank_scale is not None:
            raise ValueError("give rank_scale (FNL: FFN, embeddings, output, heads) or ffn_rank_scale (FFN only)")
        if (self.spectral or self.frobenius_decay) and not self.factorized:
            raise ValueError(
                "spectral / frobenius_decay act on factorized layers: give rank_scale (--rank-scale) below 1 "
                "or ffn_rank_scale"
            )
        return self

    @property
    def factorized(self) -> bool:
        """Whether the model has factorized layers (FNL's s < 1, or the FFN-only variant)."""
        return (self.rank_scale is not None and self.rank_scale < 1) or self.ffn_rank_scale is not None

    @property
    def smoothing(self) -> float:
        return (0.1 if self.loss == "ce" else 0.0) if self.label_smoothing is None else self.label_smoothing


class TranslateRunOptions(CommandConfig):
    """Where ``translate train`` and ``translate demo`` write their run folder (:mod:`losslab.runs`), and the device."""

    model_config = ConfigDict(extra="forbid")
    COMMAND: ClassVar[str] = "losslab translate train"

    out_dir: Path | None = Field(None, description="the run folder")
    run_name: str | None = Field(None, description="default: --out-dir is the run")
    accelerator: str = Field("auto", description="one device")
    devices: int = Field(1, ge=1, description="Number of devices (only 1 per process; several: torchrun).")
    resume: Path | None = None
    overwrite: bool = Field(False, description="a run folder, once the new run has finished")

    def folder(self) -> dict[str, Any]:
        """The run-folder keywords of :func:`losslab.seq2seq.train.train_translation`."""
        return {"run_name": self.run_name, "resume": self.resume, "overwrite": self.overwrite}


class TranslateInputs(CommandConfig):
    """What ``translate train`` reads besides its flags: a YAML file of config keys, and the parallel text (aligned
    files, the IWSLT download or the toy pair; exactly one source, checked when the corpus is loaded)."""

    model_config = ConfigDict(extra="forbid")
    COMMAND: ClassVar[str] = "losslab translate train"

    config: str | None = Field(None, description="YAML file (or shipped name) of config keys.")
    src_file: Path | None = Field(None, description="Training source text, one sentence per line.")
    tgt_file: Path | None = Field(None, description="Training target text, aligned with --src-file.")
    valid_src: Path | None = Field(None, description="Validation source text.")
    valid_tgt: Path | None = Field(None, description="Validation target text.")
    test_src: Path | None = Field(None, description="Test source text.")
    test_tgt: Path | None = Field(None, description="Test target text.")
    download: bool = Field(
        False, description="Fetch IWSLT2017 de-en through datasets (network).", json_schema_extra=SWITCH
    )
    toy: bool = Field(False, description="Use the built-in toy language pair (offline).", json_schema_extra=SWITCH)

    def data(self) -> dict[str, Any]:
        """The data source as ``config.yaml`` records it (``--resume`` reads it back): the keys given, file paths
        absolute."""
        given = self.model_dump(exclude={"config"}, exclude_defaults=True)
        return {key: str(v.resolve()) if isinstance(v, Path) else v for key, v in given.items()}


class TranslateEvalOptions(CommandConfig):
    """The options of ``translate eval`` besides the run folder: the parallel text, beam search, device, output."""

    model_config = ConfigDict(extra="forbid")
    COMMAND: ClassVar[str] = "losslab translate eval"

    src_file: Path = Field(description="Source text, one sentence per line.")
    tgt_file: Path = Field(description="Reference translations, aligned.")
    beam: Beam | None = Field(None, description="Beam size (default: the run's, 5).")
    lenpen: LengthPenalty | None = Field(None, description="Length penalty (default: the run's).")
    device: str | None = Field(None, description="default: cuda if available")
    json_path: str | None = Field(None, description="Write the results as JSON to this file ('-' = stdout).")


class TranslateDemoOptions(CommandConfig):
    """The offline demo's own options (``translate demo``): its length, and FNL's factorization."""

    model_config = ConfigDict(extra="forbid")
    COMMAND: ClassVar[str] = "losslab translate demo"

    epochs: int = Field(12, ge=1, le=1000, description="Training epochs.")
    rank_scale: RankScale | None = Field(
        None,
        description="FNL option: factorize the FFN, embeddings and output at rank scale s and shrink each head to "
        "int(s·d/H), with spectral init and Frobenius decay (the seed's --rank-scale s --spectral --wd2fd).",
    )
