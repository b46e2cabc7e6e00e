"""``FinetuneConfig``: every option of a causal-LM finetuning run (``losslab lm finetune``); the CLI's flags are
generated from it (:func:`losslab.cli.options.options_from_model`), so a bound declared here is the flag's range.

    cfg = FinetuneConfig(model="facebook/opt-125m", out_dir="runs/opt125m-rlo", loss="root", k=5, m=5)
    cfg = FinetuneConfig.build({"model": "tiny", "out_dir": "run", "lr": -1})   # ConfigError naming lr

Defaults are the RLO reference recipe (llm.md §4) on raw text. No torch here (the CLI parses before heavy imports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from losslab.train.config import CommandConfig

#: Precisions: full float32, autocast to fp16 (with a gradient scaler) or bf16, or bf16 weights (no autocast).
Precision = Literal["32-true", "16-mixed", "bf16-mixed", "bf16-true"]
PRECISIONS: tuple[str, ...] = Precision.__args__  # type: ignore[attr-defined]
#: Blocks held at once (a typo in --batch-size or --grad-accum would exhaust memory).
MAX_BATCH = 65_536
#: Config keys a ``--resume`` must keep (the checkpoint holds this model's weights).
MATCH_KEYS = ("model", "pad_token")
#: Keys that say where and how the run runs, not what it trains (not in config.yaml).
RUN_KEYS = ("out_dir", "run_name", "resume", "overwrite", "progress")
#: Keys only the Lightning version of ``lm finetune`` stored (a run it wrote cannot be resumed by the plain loop).
LIGHTNING_KEYS = ("strategy", "num_nodes")


class FinetuneConfig(CommandConfig):
    """Model, data, token loss, AdamW with warmup-linear-decay, steps, precision and run-folder options.

    ``text_file`` (local, offline) overrides ``dataset``; without ``val_file`` its last ``val_fraction`` of tokens
    is held out. ``max_steps`` (optimizer steps) overrides ``epochs`` when set. One optimizer step takes
    ``batch_size × grad_accum`` blocks; a history row and ``checkpoints/last.ckpt`` are written every
    ``checkpoint_every`` steps (the plain loop's "epoch"), validation every ``eval_every`` steps (a multiple).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    COMMAND: ClassVar[str] = "losslab lm finetune"

    model: str | None = Field(None, description="Hub name (facebook/opt-125m) or local folder of a causal LM.")
    out_dir: Path | None = Field(
        None,
        description="The run folder (checkpoints, history, finetuned model), or the folder of run folders with "
        "--run-name",
    )
    run_name: str | None = Field(None, description="Default: --out-dir is the run folder")
    dataset: Literal["wikitext2", "c4", "ptb"] = Field("wikitext2", description="Corpus (needs network).")
    text_file: Path | None = Field(None, description="Local training text (overrides --dataset).")
    val_file: Path | None = Field(None, description="Local validation text (default: the last --val-fraction).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of --text-file held out without --val-file.")
    block_size: int = Field(256, ge=1, le=1_048_576, description="Tokens per training block.")
    loss: Literal["ce", "root", "root_convex"] = Field(
        "root", description="Of every next-token prediction (losslab.objectives.token)"
    )
    k: float = Field(5.0, gt=0, le=1e6, description="5 in RLO's LLM runs")
    m: float = Field(5.0, gt=0, le=1e6, description="5 in RLO's LLM runs")
    lr: float = Field(1e-5, gt=0, le=10, description="AdamW learning rate (peak, after warmup).")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay (not on biases and norms).")
    warmup_steps: int = Field(
        500, ge=0, le=10**9, description="Linear warmup steps, then linear decay to 0 at the last step."
    )
    epochs: int = Field(1, ge=1, le=100_000, description="Passes over the training text (ignored with --max-steps).")
    max_steps: int | None = Field(None, ge=1, le=10**9, description="Optimizer steps to train (overrides --epochs).")
    batch_size: int = Field(4, ge=1, le=MAX_BATCH, description="Blocks per micro-batch (one forward and backward).")
    grad_accum: int = Field(2, ge=1, le=MAX_BATCH, description="Micro-batches per optimizer step.")
    gradient_clip: float = Field(1.0, gt=0, le=1e6, description="Clip the gradient norm to this value.")
    precision: Precision = Field(
        "32-true", description="32-true, 16-mixed (GPU), bf16-mixed (autocast) or bf16-true (bf16 weights)."
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="Auto picks cuda if available"
    )
    devices: Literal["auto", "1"] = Field(
        "auto",
        description="Devices: one per process (lm finetune trains on one device of --accelerator's kind; several: "
        "torchrun --nproc_per_node N).",
    )
    seed: int = Field(42, ge=0, lt=2**63, description="Data order, dropout and init")
    eval_every: int = Field(
        500, ge=1, le=10**9, description="Validate every N optimizer steps (a multiple of --checkpoint-every)."
    )
    checkpoint_every: int = Field(
        500, ge=1, le=10**9, description="A history row and checkpoints/last.ckpt every N optimizer steps."
    )
    max_eval_windows: int | None = Field(
        None, ge=1, le=10**9, description="Cap the held-out windows (quick runs; default: all)."
    )
    pad_token: Literal["eos"] | None = Field(None, description="Use EOS as pad token when the tokenizer has none.")
    resume: Path | None = Field(None, description="With its stored config")
    overwrite: bool = Field(False, description="A run folder, once the new run has finished")
    progress: bool | None = Field(None, description="Progress on stderr (None: a bar on a terminal, else lines).")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.model is None:
            raise ValueError("give --model (a hub name or a local folder of a causal LM)")
        if self.out_dir is None and self.resume is None:
            raise ValueError("give --out-dir (the run folder) or --resume RUN (a killed run to continue)")
        if self.eval_every % self.checkpoint_every:
            raise ValueError(
                f"eval_every={self.eval_every} is not a multiple of checkpoint_every={self.checkpoint_every}: "
                "validation runs when a checkpoint is written; set --eval-every to a multiple of --checkpoint-every"
            )
        return self

    def loss_spec(self) -> Any:
        """The training loss, a :class:`losslab.objectives.token.TokenLossSpec` (``ce``, ``root``, ``root_convex``)."""
        from losslab.objectives.token import TokenLossSpec

        return TokenLossSpec(kind=self.loss, k=self.k, m=self.m)

    def stored(self) -> dict[str, Any]:
        """What ``config.yaml`` holds: every key but :data:`RUN_KEYS`, JSON-friendly."""
        return self.model_dump(mode="json", exclude=set(RUN_KEYS))


Corpus = Literal["wikitext2", "c4", "ptb"]


class LmEvalOptions(CommandConfig):
    """One ``losslab lm eval`` (``--json`` and ``--progress`` are the commands' shared options)."""

    COMMAND: ClassVar[str] = "losslab lm eval"
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name, local folder, or packed .safetensors from `lm quantize`.")
    tokenizer: str | None = Field(
        None, description="Tokenizer source (default: --model, or the one recorded in a packed file)."
    )
    dataset: Corpus = Field("wikitext2", description="Test corpus (network).")
    text_file: str | None = Field(None, description="Local test text (overrides --dataset).")
    seqlen: int | None = Field(None, ge=2, description="Window length (default: the model's context; at most it).")
    max_windows: int | None = Field(
        None, ge=1, le=10**9, description="Score only the first N windows (c4 defaults to 256)."
    )
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Weights dtype (auto: fp16 on GPU, fp32 on CPU)."
    )
    device: str | None = Field(None, description="default: cuda if available")
    overwrite: bool = Field(False, description="an existing --json file")


class LmLandscapeOptions(CommandConfig):
    """One ``losslab lm landscape`` (``--json`` and ``--progress`` are the commands' shared options)."""

    COMMAND: ClassVar[str] = "losslab lm landscape"
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name or local folder of a causal LM.")
    probes: str = Field("eig,trace", description="eig, trace, density, sharpness, kurtosis.")
    top_k: int = Field(1, ge=1, le=100, description="Top eigenvalues (Lanczos, at most 100 steps).")
    calib: Corpus = Field("c4", description="Calibration corpus (network).")
    text_file: str | None = Field(None, description="Local calibration text (overrides --calib).")
    calib_samples: int = Field(8, description="windows probed")
    seqlen: int | None = Field(None, ge=1, description="Window length (default: the model's context; at most it).")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH, description="Windows per pass (not the answer).")
    seed: int = Field(0, description="of the windows and the probes")
    device: str | None = Field(None, description="default: cuda if available")
    overwrite: bool = Field(False, description="an existing --json file")
