"""The typed configuration of a classifier training run.

One pydantic model, :class:`TrainConfig`, holds every option of ``losslab train``; the CLI flags are generated
from its fields (``--label-smoothing`` is ``label_smoothing``), a YAML ``--config`` file supplies the same keys,
and flags given on the command line override the file. Values are checked when the config is built, so a bad
key or value fails before any work starts, with a message that names the key, the value and what is allowed::

    from losslab.train import TrainConfig
    cfg = TrainConfig(dataset="digits", loss="root", k=3, m=3, epochs=5)
    cfg = TrainConfig.from_yaml("run.yaml", overrides={"lr": 0.05})
"""

from __future__ import annotations

import itertools
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from losslab.errors import ConfigError

OptimizerName = Literal["sgd", "nesterov", "adam", "adamw"]
SchedulerName = Literal["none", "cosine", "step", "multistep", "exponential"]
PrecisionName = Literal["32", "16-mixed", "bf16-mixed"]
LoggerName = Literal["csv", "tensorboard", "mlflow", "wandb"]
AttentionProducts = Literal["both", "qk", "ov"]
MixupMode = Literal["batch", "pair", "elem"]
LoaderName = Literal["auto", "device", "workers"]
EngineName = Literal["auto", "plain", "lightning"]
EraseMode = Literal["const", "pixel"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


_Config = TypeVar("_Config", bound="CommandConfig")

SWITCH: dict[str, Any] = {"switch": True}
"""``json_schema_extra`` of a ``bool`` field whose flag is a lone switch (``--toy``, ``--no-logistic``: off unless
given) rather than a ``--flag/--no-flag`` pair (:func:`losslab.cli.options.options_from_model`)."""


class CommandConfig(BaseModel):
    """Base of a command's typed config: :meth:`build` reports every bad key in one :class:`ConfigError`."""

    #: The command whose ``--help`` lists the keys (named in the error for an unknown key).
    COMMAND: ClassVar[str] = "losslab train"

    @classmethod
    def build(cls: type[_Config], values: dict[str, Any]) -> _Config:
        """Build from a plain dict, turning pydantic's errors into one :class:`ConfigError` naming the keys."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error_from(exc, cls, cls.COMMAND) from None


class TrainConfig(CommandConfig):
    """Every option of a classifier training run (``losslab train``).

    Groups: data, model, objective, optimisation and schedule, regularization, factorization, run/hardware.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data
    dataset: str = Field(
        "digits",
        description="Dataset name: digits (bundled, offline), cifar10, cifar100, "
        "tiny_imagenet, food101, imagenet, fake.",
    )
    data_dir: Path | None = Field(
        None,
        description="Folder that holds (or receives) the dataset files; default "
        "$LOSSLAB_DATA_DIR or ~/.cache/losslab/data.",
    )
    download: bool = Field(False, description="Download the dataset if it is missing (needs network).")
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Fraction of the training set held out (seeded) for validation "
        "and checkpoint selection; the test set is never used for selection.",
    )
    augment: bool = Field(True, description="Standard training augmentation for the dataset (crop + flip).")
    randaugment: str | None = Field(None, description="timm RandAugment policy, e.g. rand-m9-mstd0.5; off if unset.")
    img_size: int | None = Field(None, ge=1, description="Input image size; defaults to the dataset's native size.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (the workers loader).")

    # --- input pipeline and speed (losslab.data.device, losslab.threads)
    loader: LoaderName = Field(
        "auto",
        description="Input pipeline: device (splits held on the training device, batched augmentation), "
        "workers (DataLoader, per-image transforms) or auto (device when every transform can be batched and the "
        "data takes at most a quarter of the free device memory; the reason is logged and kept in result.json).",
    )
    cutout: int = Field(
        0, ge=0, description="Cutout square side in pixels on training images (0 = off; FNL's WRN uses 16)."
    )
    reprob: float = Field(0.0, ge=0, le=1, description="timm RandomErasing probability per training image (0 = off).")
    remode: EraseMode = Field("const", description="RandomErasing fill: const (zeros) or pixel (N(0, 1) noise).")
    recount: int = Field(1, ge=1, description="RandomErasing boxes per image: uniform in 1..recount.")
    engine: EngineName = Field(
        "auto",
        description="Training loop: plain (a PyTorch loop in this process on one device; starts seconds sooner, "
        "no Lightning import), lightning (Lightning's Trainer: several devices or nodes, strategies, trackers) "
        "or auto (plain unless the run needs Lightning; the reason is logged and kept in result.json).",
    )
    val_every: int = Field(1, ge=1, description="Validate every N epochs (the last epoch is always validated).")
    compile: bool = Field(False, description="torch.compile the model (not with double-backward regularizers).")
    compile_mode: CompileMode = Field(
        "default", description="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune."
    )
    channels_last: bool | None = Field(
        None, description="Channels-last memory format; default: on for conv nets on CUDA."
    )
    tf32: bool = Field(True, description="Allow TF32 matmuls/convolutions on CUDA; --no-tf32 for strict fp32.")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of torch; default: LOSSLAB_THREADS, else OMP_NUM_THREADS, else the CPUs this "
        "process may use (affinity, cgroup quota) minus those kept busy by other processes.",
    )

    # --- model
    model: str = Field(
        "small_cnn",
        description="Model name: a losslab model (cifar_resnet20, regulquant_convnet, "
        "cifar_vgg16_bn, small_cnn, ...) or any timm model (vit_small_patch16_224, ...).",
    )
    pretrained: bool = Field(False, description="Start from timm's pretrained weights (needs network or cache).")

    # --- objective
    loss: str = Field("root", description="Training objective: ce, focal, focal_rlo_paper, root, root_convex, sgt.")
    k: float = Field(3.0, gt=0, description="Rooted loss k (root, root_convex); larger k tends to cross entropy.")
    m: float = Field(3.0, gt=0, description="Rooted loss multiplier m (root); nearly a no-op under Adam/AdamW.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing s for ce and sgt (uniform mass s/C).")
    focal_gamma: float = Field(2.0, ge=0, description="Focal loss gamma (0 or >= 1).")
    focal_alpha: float = Field(0.25, ge=0, description="Focal loss alpha (scalar multiplier).")
    sgt_alpha: float = Field(
        0.25, gt=0, le=1, description="Softmax gradient tampering alpha in (0, 1] (SGT's --modify-softmax)."
    )

    # --- optimisation
    optimizer: OptimizerName = Field("sgd", description="Optimizer.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd, nesterov) or beta1 (adam, adamw).")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay (coupled L2 for sgd/adam, decoupled for adamw).")
    batch_size: int = Field(64, ge=1, description="Training batch size (per device).")
    epochs: int = Field(15, ge=1, description="Training epochs (warmup included, cooldown added).")
    scheduler: SchedulerName = Field("cosine", description="Learning-rate schedule, stepped per epoch.")
    milestones: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        description="Epochs at which multistep multiplies the lr by "
        "gamma (comma separated on the CLI); empty = [epochs/2, 5*epochs/6].",
    )
    step_size: int = Field(30, ge=1, description="Epochs between decays for the step scheduler.")
    gamma: float = Field(0.1, gt=0, description="Decay factor of step, multistep and exponential schedules.")
    warmup_epochs: int = Field(0, ge=0, description="Linear warmup epochs from warmup_lr.")
    warmup_lr: float = Field(1e-5, ge=0, description="Learning rate at the start of warmup.")
    cooldown_epochs: int = Field(0, ge=0, description="Epochs at min_lr after the schedule ends (timm cooldown).")
    min_lr: float = Field(0.0, ge=0, description="Lower bound of the cosine schedule and cooldown learning rate.")
    gradient_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")

    # --- timm recipe (losslab.train.recipe: timm's own Mixup, ModelEmaV3 and stochastic depth)
    mixup: float = Field(0.0, ge=0, description="Mixup alpha (timm --mixup); 0 = off. Works with every objective.")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha (timm --cutmix); 0 = off.")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="Probability of mixing a batch (timm --mixup-prob).")
    mixup_switch_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Probability of CutMix instead of Mixup when both are on (timm --mixup-switch-prob).",
    )
    mixup_mode: MixupMode = Field("batch", description="One lambda per batch, per pair or per sample (timm).")
    model_ema: bool = Field(
        False,
        description="Keep an exponential moving average of the weights (timm ModelEmaV3); the EMA weights "
        "are validated, selected and saved.",
    )
    model_ema_decay: float = Field(
        0.9998, gt=0, lt=1, description="EMA decay per optimizer step (timm --model-ema-decay)."
    )
    model_ema_warmup: bool = Field(False, description="timm's EMA warmup (decay grows with the step count).")
    drop: float = Field(0.0, ge=0, le=1, description="Dropout rate before the classifier (timm --drop; timm models).")
    drop_path: float = Field(0.0, ge=0, le=1, description="Stochastic depth rate (timm --drop-path; timm models).")
    initial_checkpoint: Path | None = Field(
        None,
        description="Start from the weights of a timm checkpoint (timm train.py's .pth.tar or a state dict, read "
        "with weights_only=True; timm --initial-checkpoint). --resume FILE.pth.tar means the same.",
    )

    # --- regularization (losslab.regularizers)
    regularizer: str | None = Field(
        None, description="Regularizer: lp_grad, l1grad, l2grad, variance, std, inverse_variance, inverse_std."
    )
    lmbda: float = Field(0.0, ge=0, description="Regularizer strength lambda (required with --regularizer).")
    p: float = Field(2.0, ge=1, description="p of the lp_grad norm (p >= 1).")
    activation_gradients: bool = Field(True, description="lp_grad also penalizes activation gradients.")
    reg_start_epoch: int = Field(
        0, ge=0, description="First epoch with the regularizer on (RegulQuant's --first_regularized_epoch)."
    )
    save_preregularized: bool = Field(False, description="Save a checkpoint just before regularization starts.")
    reg_schedule: Path | None = Field(
        None,
        description="YAML file with regularization phases, or a shipped one by name (combined_protocol).",
    )

    # --- factorization (losslab.layers)
    rank_scale: float | None = Field(None, gt=0, description="Factorize conv/linear layers at this rank scale.")
    target_ratio: float | None = Field(None, gt=0, description="Factorize to this parameter ratio (bisection on rank).")
    spectral: bool = Field(False, description="Spectral initialization of factorized layers.")
    frobenius_decay: bool = Field(
        False,
        description="Frobenius decay on factor products instead of weight decay "
        "on factors (same lambda as --weight-decay). Factorized layers only: attention "
        "needs --attention-frobenius-decay.",
    )
    attention_spectral: bool = Field(
        False,
        description="Spectral rebalance of every attention head at init: split Q_h^T K_h "
        "and O_h V_h into balanced factors from their SVD (same function; the original's "
        "--spectral-quekey/--spectral-outval). Needs timm-style attention (a ViT such as "
        "vit_tiny_patch16_224).",
    )
    attention_frobenius_decay: bool = Field(
        False,
        description="Per-head Frobenius decay (lambda/2)||Q_h^T K_h||_F^2 and "
        "(lambda/2)||O_h V_h||_F^2 instead of weight decay on the qkv/proj weights, "
        "lambda = --weight-decay; those weights leave weight decay (the original's "
        "--wd2fd-quekey/--wd2fd-outval). Separate from --frobenius-decay, which covers "
        "factorized layers only. Needs timm-style attention.",
    )
    attention_products: AttentionProducts = Field(
        "both",
        description="Per-head products that --attention-spectral and --attention-frobenius-decay "
        "act on: qk (Q_h^T K_h), ov (O_h V_h) or both.",
    )
    square: bool = Field(False, description="Overcomplete U M V^T factorization that collapses to dense.")
    tensor_train: bool = Field(False, description="Tensor-train 1x1 convs after depthwise convs.")
    record_frob_norms: Path | None = Field(None, description="Record ||UV^T||_F per factorized layer per step.")
    normalize: Path | None = Field(None, description="Rescale factors to follow recorded norms (no decay).")

    # --- run and hardware
    seed: int = Field(0, ge=0, lt=2**63, description="Random seed (model init, data order, augmentation).")
    precision: PrecisionName = Field("32", description="Numeric precision (Lightning).")
    accelerator: str = Field("auto", description="cpu, gpu, mps or auto.")
    devices: str = Field("auto", description="Devices per node: auto, a count, or a list like 0,1.")
    num_nodes: int = Field(1, ge=1, description="Number of nodes for multi-node training.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, fsdp, ...")
    logger: LoggerName = Field("csv", description="Metrics logger (csv always written too).")
    logit_stats: bool = Field(False, description="Log logit statistics (norm, |mean|, |max|, var) per epoch.")
    out_dir: Path = Field(Path("runs"), description="Folder that receives run folders.")
    run_name: str | None = Field(None, description="Run folder name; default: dataset-model-loss-seed.")
    resume: Path | None = Field(None, description="Resume from a checkpoint file or a run folder's last checkpoint.")
    overwrite: bool = Field(False, description="Allow replacing a finished run folder of the same name.")
    progress: bool | None = Field(None, description="Progress bar; default: on when stderr is a terminal.")

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int | None) -> int | None:
        from losslab.threads import max_threads

        if value is not None and value < 1:
            raise ValueError("must be >= 1 (leave unset for the automatic choice)")
        if value is not None and value > max_threads():
            raise ValueError(f"must be <= {max_threads()} (4 per CPU of this machine)")
        return value

    @field_validator("img_size")
    @classmethod
    def _img_size(cls, value: int | None) -> int | None:
        if value is not None and not MIN_IMG_SIZE <= value <= MAX_IMG_SIZE:
            raise ValueError(f"must be in [{MIN_IMG_SIZE}, {MAX_IMG_SIZE}] pixels (or unset for the dataset's own)")
        return value

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        if value > MAX_LOADER_WORKERS:
            raise ValueError(f"must be <= {MAX_LOADER_WORKERS} worker processes")
        return value

    @field_validator("focal_gamma")
    @classmethod
    def _gamma(cls, value: float) -> float:
        if value != 0 and value < 1:
            raise ValueError("must be 0 or >= 1; (1-p)^(gamma-1) is infinite at p=1 otherwise")
        return value

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(value)) or any(v <= 0 for v in value):
            raise ValueError("must be positive and strictly increasing")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.rank_scale is not None and self.target_ratio is not None:
            raise ValueError("give either rank_scale or target_ratio, not both")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}")
        if self.cooldown_epochs and self.scheduler != "cosine":
            raise ValueError(
                f"cooldown_epochs={self.cooldown_epochs} needs scheduler='cosine' (got "
                f"{self.scheduler!r}); other schedules have no end point to cool down from"
            )
        if self.regularizer is not None and self.reg_schedule is not None:
            raise ValueError("give either regularizer (with lmbda, reg_start_epoch) or reg_schedule, not both")
        if self.attention_frobenius_decay and self.weight_decay == 0:
            raise ValueError(
                "attention_frobenius_decay uses lambda = weight_decay, which is 0, so it would do nothing; "
                "set weight_decay (--weight-decay), e.g. 1e-4"
            )
        if self.attention_products != "both" and not (self.attention_spectral or self.attention_frobenius_decay):
            raise ValueError(
                f"attention_products={self.attention_products!r} has no effect: add attention_frobenius_decay "
                "(--attention-frobenius-decay) or attention_spectral (--attention-spectral)"
            )
        if self.reg_start_epoch >= self.epochs and self.regularizer is not None:
            raise ValueError(
                f"reg_start_epoch={self.reg_start_epoch} is not below epochs={self.epochs}: "
                "the regularizer would never run"
            )
        if self.regularizer is not None and "lmbda" not in self.model_fields_set:
            raise ValueError(
                f"regularizer={self.regularizer!r} needs its strength lmbda (--lmbda), e.g. 0.01; without it the "
                "regularizer would be multiplied by 0 (give --lmbda 0 explicitly for an unregularized control)"
            )
        return self

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Load a YAML file of config keys, then apply ``overrides`` (e.g. flags given on the command line)."""
        values = read_yaml_mapping(path)
        values.update(overrides or {})
        return cls.build(values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly dict (paths as strings)."""
        return self.model_dump(mode="json")

    def default_run_name(self) -> str:
        """``dataset-model-loss-sSEED``, the folder name used when ``run_name`` is unset."""
        return f"{self.dataset}-{self.model}-{self.loss}-s{self.seed}"


class TrainCommandOptions(CommandConfig):
    """The flags of ``losslab train`` that are not config keys: the YAML file of keys, printing the resolved
    config, and timm's recipe flags, so that a timm (or SGT fork) command line pastes as is."""

    model_config = ConfigDict(extra="forbid")

    config: Path | None = Field(
        None, description="YAML file of config keys (the flags' names with underscores); flags override it."
    )
    print_config: bool = Field(
        False, description="Print the resolved config as YAML and exit.", json_schema_extra=SWITCH
    )
    amp: bool = Field(False, description="timm's --amp: the same as --precision 16-mixed.", json_schema_extra=SWITCH)
    amp_dtype: Literal["float16", "bfloat16"] | None = Field(
        None, description="timm's --amp-dtype: bfloat16 makes --amp mean --precision bf16-mixed."
    )
    validate_checkpoint: bool = Field(  # the flag is --validate (a pydantic model has a validate attribute)
        False,
        description="Evaluate the checkpoint of --resume (run folder or .ckpt) on the test split instead of training "
        "(timm's --validate; the same as `losslab evaluate`).",
        json_schema_extra=SWITCH,
    )
    dali: bool = Field(
        False,
        description="Accepted so SGT's recipe pastes as is, and ignored: losslab picks its own input pipeline.",
        json_schema_extra=SWITCH,
    )


#: File endings of timm checkpoints and bare state dicts (``.pth.tar`` ends in ``.tar``); losslab's are ``.ckpt``.
TIMM_SUFFIXES = (".tar", ".pth", ".pt", ".bin")


def is_timm_checkpoint(path: str | Path) -> bool:
    """True for a file named like a timm checkpoint or state dict (not a run folder, not a ``.ckpt``)."""
    return Path(path).suffix in TIMM_SUFFIXES


#: Bounds of sizes a config controls (checked before anything is allocated): input image side in pixels and
#: DataLoader worker processes.
MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 2048
MAX_LOADER_WORKERS = 64


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; a clear error otherwise."""
    from losslab.io import load_yaml_file

    path = Path(path)
    values = load_yaml_file(path, "config file") or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, got {type(values).__name__}"
        )
    return values


def config_error_from(exc: ValidationError, model: type[BaseModel], command: str = "losslab train") -> ConfigError:
    """One readable ConfigError from a pydantic ValidationError: key, value, problem; unknown keys list choices
    (and point to ``command --help``)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            import difflib

            close = difflib.get_close_matches(key, list(model.model_fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            lines.append(f"unknown key {key!r}{hint} (see `{command} --help` for all keys)")
        else:
            message = _range_message(err, model) or err["msg"].removeprefix("Value error, ")
            shown = f"={err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
            lines.append(f"{key}{shown}: {message}")
    return ConfigError("invalid configuration: " + "; ".join(lines))


RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _range_message(err: Any, model: type[BaseModel]) -> str | None:
    """``must be in (0, 1]`` (or ``must be > 0``) for a value outside its field's declared bounds, else None."""
    info = model.model_fields.get(str(err["loc"][0])) if err["type"] in RANGE_ERRORS and err["loc"] else None
    if info is None:
        return None
    metadata = [*info.metadata, *_inner_metadata(info.annotation)]
    bounds = {key: getattr(item, key) for item in metadata for key in ("gt", "ge", "lt", "le") if hasattr(item, key)}
    bounds = {key: value for key, value in bounds.items() if value is not None}
    low = next(((key, bounds[key]) for key in ("gt", "ge") if key in bounds), None)
    high = next(((key, bounds[key]) for key in ("lt", "le") if key in bounds), None)
    if low and high:
        return f"must be in {'(' if low[0] == 'gt' else '['}{low[1]:g}, {high[1]:g}{')' if high[0] == 'lt' else ']'}"
    key, value = low or high  # type: ignore[misc]
    return f"must be {dict(gt='>', ge='>=', lt='<', le='<=')[key]} {value:g}"


def _inner_metadata(annotation: Any) -> list[Any]:
    """The constraints of the ``Annotated[X, Field(...)]`` inside ``annotation`` (``Beam | None``, the items of
    ``list[Annotated[float, Field(gt=0)]]``), which pydantic keeps off the field's own metadata."""
    items: list[Any] = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            for extra in typing.get_args(arg)[1:]:
                items.extend(getattr(extra, "metadata", [extra]))
    return items
