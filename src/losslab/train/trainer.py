"""``fit(config) -> RunResult``: train a classifier, select the best checkpoint on validation, test it.

The same call backs ``losslab train`` and every study job::

    from losslab.train import TrainConfig, fit
    result = fit(TrainConfig(dataset="digits", loss="root", epochs=5))
    print(result.test_acc, result.run_dir)

A run folder ``out_dir/run_name`` receives: ``config.yaml`` (the resolved config), ``metrics.csv`` (Lightning's
CSV log), ``history.json`` (one row per epoch), ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (best
validation accuracy; the test set is never used for selection), ``checkpoints/preregularized.ckpt`` when asked,
and ``result.json`` with the test metrics of the best checkpoint (checkpoint paths relative to the run folder), the
input pipeline used and why (``loader``), training throughput (``train_images_per_s``, validation excluded), the
time from ``fit`` to the first training step, the torch thread choice and the speed settings (TF32, channels-last,
compile). Every file, checkpoints included, is written atomically. A run killed at any point resumes from
``last.ckpt`` with ``resume=<run folder>``, keeping its metrics history; a finished run folder is never resumed, and
is replaced only with ``overwrite=True`` once the new run has finished (see :mod:`losslab.train.run_folder`). A
loss that turns NaN/inf stops the run (``TrainingDivergedError``) before that epoch's checkpoint is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader

from losslab.errors import ConfigError
from losslab.io import write_json_atomic, write_yaml_atomic
from losslab.train.build import build_model, build_objective, build_regularization, make_loaders
from losslab.train.checkpoint_io import AtomicCheckpointIO, KeepingCSVLogger, KeepMetricsHistory, RunCheckpoint
from losslab.train.classifier import ClassifierModule
from losslab.train.config import TrainConfig
from losslab.train.recipe import ModelEma, build_mixup
from losslab.train.run_folder import RunFolder, claim_run_folder, resolve_resume

__all__ = ["RunResult", "evaluate_model", "fit", "resolve_resume"]


@dataclass
class RunResult:
    """What a finished training run produced (all accuracies in percent)."""

    run_dir: Path
    config: TrainConfig
    test_acc: float
    test_ce: float
    test_top5: float
    best_val_acc: float
    best_ckpt: Path
    last_ckpt: Path
    num_params: int
    num_params_dense: int
    wall_time_s: float
    epochs: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        """Parameters of the trained model over those of its dense counterpart (1.0 when not factorized)."""
        return self.num_params / self.num_params_dense

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the content of ``result.json``; checkpoint paths relative to the run folder)."""
        return {
            "run_dir": str(self.run_dir),
            "test_acc": self.test_acc,
            "test_ce": self.test_ce,
            "test_top5": self.test_top5,
            "best_val_acc": self.best_val_acc,
            "best_ckpt": _relative(self.best_ckpt, self.run_dir),
            "last_ckpt": _relative(self.last_ckpt, self.run_dir),
            "num_params": self.num_params,
            "num_params_dense": self.num_params_dense,
            "compression_ratio": self.compression_ratio,
            "wall_time_s": self.wall_time_s,
            **self.speed,
            "protocol": "top-1 accuracy (%) on the test split of the checkpoint with the best validation accuracy",
            "config": self.config.to_dict(),
        }


def _relative(path: Path, run_dir: Path) -> str:
    """``path`` relative to ``run_dir`` (POSIX separators), so a run folder can be moved or copied whole."""
    try:
        return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


class EpochHistory(Callback):
    """Keeps one row of epoch-level metrics per epoch in ``history.json`` (rewritten atomically each epoch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume, trainer.current_epoch is the restored epoch: rows from the lost epoch in flight go.
        if self.path.exists():
            previous = json.loads(self.path.read_text())
            self.rows = [row for row in previous if row["epoch"] < trainer.current_epoch]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            row[key] = float(value)
        self.rows.append(row)
        write_json_atomic(self.path, self.rows)


class SavePreregularized(Callback):
    """Saves ``checkpoints/preregularized.ckpt`` (model + optimizer) at the end of epoch ``first - 1``."""

    def __init__(self, path: Path, first_regularized_epoch: int) -> None:
        self.path = path
        self.epoch = first_regularized_epoch - 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


class PlaceOnDevice(Callback):
    """Moves device-pipeline loaders to the training device once the strategy knows it (after a DDP launch)."""

    def __init__(self, loaders: list[Any]) -> None:
        self.loaders = loaders

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for loader in self.loaders:
            loader.to(trainer.strategy.root_device)


class ValidateEvery(Callback):
    """Validation every ``every`` epochs and always in the last one (Lightning's own setting skips the last)."""

    def __init__(self, every: int, last_epoch: int) -> None:
        self.every, self.last_epoch = every, last_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        validate = (epoch + 1) % self.every == 0 or epoch >= self.last_epoch
        trainer.check_val_every_n_epoch = 1 if validate else 1 << 62


class Throughput(Callback):
    """Training images per second (first batch start to last batch end of each epoch, validation excluded) and
    the wall-clock time of the first training step."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_step_s: float | None = None
        self.first_step_unix: float | None = None
        self.images = 0
        self.seconds = 0.0
        self._t0: float | None = None

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.started
            self.first_step_unix = time.time()
        if self._t0 is None:
            self._t0 = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.images += int(batch[1].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs before this hook, so measure the epoch's training part with on_validation_start too.
        self._stop(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(pl_module)

    def _stop(self, pl_module: pl.LightningModule) -> None:
        if self._t0 is not None:
            self.seconds += self._now(pl_module) - self._t0
            self._t0 = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


DOUBLE_BACKWARD = frozenset({"lp_grad", "l1grad", "l2grad"})


def speed_settings(cfg: TrainConfig, model: nn.Module, regularizers: list[Any]) -> dict[str, Any]:
    """Apply TF32, channels-last and torch.compile to ``model`` as ``cfg`` asks (checked first); what was applied.

    TF32 is allowed on CUDA unless ``tf32=False``; channels-last defaults to on for conv nets on CUDA; compile
    refuses regularizers that need double backward (torch.compile cannot differentiate its graph twice).
    """
    from losslab.train.build import training_device

    cuda = training_device(cfg).type == "cuda"
    if cfg.compile:
        needs = sorted({r.name for r in regularizers if getattr(r, "name", "") in DOUBLE_BACKWARD})
        if needs:
            raise ConfigError(
                f"compile (--compile) cannot train with {', '.join(needs)}: the regularizer differentiates the "
                "gradient (double backward), which torch.compile does not support; drop --compile for this run "
                "(eager mode with the closed-form double backwards is the fast path there)"
            )
        import torch._dynamo

        if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
            raise ConfigError(
                f"compile (--compile): torch.compile is not available with torch {torch.__version__} on this "
                "Python/platform; drop --compile"
            )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    is_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = (cuda and is_conv) if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile(mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return {"tf32": bool(cuda and cfg.tf32), "channels_last": bool(channels_last), "compiled": cfg.compile}


def say(message: str) -> None:
    """One line on stderr from rank zero (the input pipeline choice, throughput)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(f"losslab: {message}", file=sys.stderr, flush=True)


LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def check_logger_available(name: str) -> None:
    """Fail before training if the experiment tracker's package is missing, saying how to install it."""
    import importlib.util

    packages = LOGGER_PACKAGES.get(name, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise ConfigError(
            f"logger={name!r} needs the {packages[0]!r} package, which is not installed; "
            "pip install 'losslab[loggers]' (or the package alone), or use --logger csv"
        )


def make_loggers(cfg: TrainConfig, run_dir: Path) -> list[Logger]:
    """CSV always, plus the configured experiment tracker."""
    loggers: list[Logger] = [KeepingCSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    elif cfg.logger == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(
            MLFlowLogger(experiment_name="losslab", run_name=run_dir.name, tracking_uri=f"file:{run_dir / 'mlruns'}")
        )
    elif cfg.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="losslab", name=run_dir.name, save_dir=str(run_dir)))
    return loggers


def parse_devices(devices: str) -> int | str | list[int]:
    """Lightning's ``devices`` from a string: ``auto``, ``4`` or ``0,1``."""
    if devices == "auto":
        return devices
    if "," in devices:
        return [int(d) for d in devices.split(",") if d]
    return int(devices) if devices.lstrip("-").isdigit() else devices


def quiet_lightning() -> None:
    """Silence Lightning's start-up banners and advice that is noise for losslab runs (warnings stay visible)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*Experiment logs directory.*exists and is not empty.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
        ".*Checkpoint directory .* exists and is not empty.*",  # a resumed run's own checkpoints
        ".*sync_dist=True.*when logging on epoch level.*",  # evaluation metrics are all-reduced sums already
    ):
        warnings.filterwarnings("ignore", message=message)


def check_lightning_options(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for accelerator/devices/strategy/num_nodes this machine cannot run, before work."""
    accelerator = cfg.accelerator.lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"accelerator={cfg.accelerator!r} needs a CUDA GPU, but torch.cuda.is_available() is False on this "
            f"machine (torch {torch.__version__}, CUDA build {torch.version.cuda}); use --accelerator cpu or auto"
        )
    try:
        devices = parse_devices(cfg.devices)
    except ValueError:
        raise ConfigError(
            f"devices={cfg.devices!r} is not allowed: use auto, a count (2, -1 = all) or a list of indices (0,1)"
        ) from None
    if cfg.num_nodes < 1:
        raise ConfigError(f"num_nodes={cfg.num_nodes!r} must be >= 1")
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:  # Lightning's own checks of the combination (unknown strategy, more devices than present, ...)
        pl.Trainer(
            accelerator=cfg.accelerator,
            devices=devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"the hardware options do not work on this machine (--accelerator {cfg.accelerator} --devices "
            f"{cfg.devices} --strategy {cfg.strategy} --num-nodes {cfg.num_nodes}): {exc}"
        ) from None


def fit(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> RunResult:
    """Train, select the best checkpoint on validation accuracy, evaluate it on the test split.

    Everything that can be wrong with the config (unknown names, unreachable compression targets, missing data,
    hardware options, the run folder) is checked before the first training step; the run folder is locked
    while the run lasts (see :mod:`losslab.train.run_folder`).
    """
    from losslab.threads import configure_threads

    configure_threads(cfg.threads)
    quiet_lightning()
    check_logger_available(cfg.logger)
    check_lightning_options(cfg)
    with claim_run_folder(cfg) as run:
        result = _fit_in(cfg, run, callbacks)
        run.commit()
    return result


def _fit_in(cfg: TrainConfig, run: RunFolder, callbacks: list[Callback] | None) -> RunResult:
    """``fit`` inside a claimed run folder: build, train into ``run.work``, test, write result.json."""
    from losslab.threads import thread_report

    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = make_loaders(cfg)
    model, num_dense = build_model(cfg, data.spec)
    objective = build_objective(cfg)
    schedule, always_on = build_regularization(cfg, model)
    speed = speed_settings(cfg, model, [*always_on, *(schedule.regularizers() if schedule is not None else [])])
    say(f"input pipeline: {data.kind} ({data.reason})")
    run_dir, resume_ckpt = run.create(), run.resume_ckpt
    write_yaml_atomic(run_dir / "config.yaml", cfg.to_dict())

    module = ClassifierModule(cfg, model, objective, schedule=schedule, always_on=always_on)
    module.mixup = build_mixup(cfg, data.spec.num_classes)
    module.channels_last = speed["channels_last"]
    throughput = Throughput(started)
    ckpt_dir = run_dir / "checkpoints"
    best = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    all_callbacks: list[Callback] = [
        best,
        EpochHistory(run_dir / "history.json"),
        KeepMetricsHistory(),
        *(callbacks or []),
    ]
    all_callbacks += [PlaceOnDevice(data.device_loaders()), throughput]
    if cfg.val_every > 1:
        all_callbacks.append(ValidateEvery(cfg.val_every, cfg.epochs + cfg.cooldown_epochs - 1))
    first_reg = getattr(schedule, "first_regularized_epoch", None)
    if cfg.save_preregularized and first_reg:
        all_callbacks.append(SavePreregularized(ckpt_dir / "preregularized.ckpt", first_reg))
    all_callbacks.extend(build_factor_callbacks(cfg))
    if cfg.model_ema:
        all_callbacks.append(ModelEma(cfg.model_ema_decay, warmup=cfg.model_ema_warmup))
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    if progress:
        all_callbacks.append(TQDMProgressBar())
    trainer = pl.Trainer(
        max_epochs=cfg.epochs + cfg.cooldown_epochs,
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        logger=make_loggers(cfg, run_dir),
        callbacks=all_callbacks,
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=cfg.gradient_clip,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(data.train))),
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        deterministic="warn",
        use_distributed_sampler=False,  # the loaders shard themselves (ShardSampler): no padded eval shards
    )
    trainer.fit(module, data.train, data.val, ckpt_path=str(resume_ckpt) if resume_ckpt else None, weights_only=True)
    best_path = Path(best.best_model_path) if best.best_model_path else ckpt_dir / "last.ckpt"
    tested = trainer.test(module, data.test, ckpt_path=str(best_path), verbose=False, weights_only=True)[0]
    history = EpochHistory(run_dir / "history.json")
    rows = json.loads(history.path.read_text()) if history.path.exists() else []
    if best.best_model_score is not None:
        best_val_acc = float(best.best_model_score)
    else:  # e.g. a run whose validation never produced a score: the best of the recorded epochs
        scores = [row["val/acc"] for row in rows if "val/acc" in row]
        best_val_acc = max(scores) if scores else float("nan")
    final = run.final
    result = RunResult(
        run_dir=final,
        config=cfg,
        test_acc=float(tested["test/acc"]),
        test_ce=float(tested["test/ce"]),
        test_top5=float(tested["test/top5"]),
        best_val_acc=best_val_acc,
        best_ckpt=final / _relative(best_path, run_dir),
        last_ckpt=final / "checkpoints" / "last.ckpt",
        num_params=sum(p.numel() for p in model.parameters()),
        num_params_dense=num_dense,
        wall_time_s=time.perf_counter() - started,
        epochs=rows,
        speed={
            "loader": data.kind,
            "loader_reason": data.reason,
            "train_images_per_s": throughput.images_per_s,
            "first_step_s": throughput.first_step_s,
            "first_step_unix": throughput.first_step_unix,
            **speed,
            "threads": thread_report(),
        },
    )
    say(f"training throughput {throughput.images_per_s:,.0f} images/s ({data.kind} pipeline)")
    if trainer.is_global_zero:  # other DDP ranks must not write into a folder rank 0 may already have swapped
        write_json_atomic(run_dir / "result.json", result.to_dict())
    return result


def build_factor_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The normalization-experiment callbacks of factorized layers (record or follow ``||UV^T||_F``)."""
    if cfg.record_frob_norms is None and cfg.normalize is None:
        return []
    from losslab.layers import NormalizeToRecorded, RecordFrobNorms

    found: list[Callback] = []
    if cfg.record_frob_norms is not None:
        found.append(RecordFrobNorms(cfg.record_frob_norms))
    if cfg.normalize is not None:
        found.append(NormalizeToRecorded(cfg.normalize))
    return found


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross entropy of ``model`` over ``loader`` (eval mode, no grad)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    ce_sum = 0.0
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        ce_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y.unsqueeze(-1)).any(dim=-1).sum())
        n += y.numel()
    model.train(was_training)
    if n == 0:
        raise ConfigError("evaluation loader is empty; check the dataset split and batch size")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "ce": ce_sum / n, "n": n}
