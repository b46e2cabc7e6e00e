"""The Lightning engine of ``fit``: Lightning's Trainer around :class:`losslab.train.classifier.ClassifierModule`.

``fit`` uses it for what the plain engine (``losslab.train.engine_plain``) does not run: several devices or nodes
(DDP, FSDP, ...), an explicit Lightning strategy, the tensorboard/mlflow/wandb loggers and user-supplied Lightning
callbacks (``--engine lightning`` also runs everything else). It writes the same run folder: ``metrics.csv``
(Lightning's CSV log, rows of finished epochs kept on resume), ``history.json``, ``checkpoints/{best,last}.ckpt``
written atomically (``AtomicCheckpointIO``), and it returns the same :class:`~losslab.train.engine.EngineOutcome`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import Logger

from losslab.errors import ConfigError
from losslab.runs.ema import EmaWeights
from losslab.runs.history import History, Throughput
from losslab.runs.progress import show_progress
from losslab.train.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from losslab.train.classifier import ClassifierModule
from losslab.train.config import TrainConfig
from losslab.train.engine import EngineOutcome, RunParts, parse_devices


class EpochHistory(Callback):
    """One row per epoch in ``history.json`` and ``metrics.csv`` through the loop's writer (:class:`History`): the
    same layout as the plain engine (``epoch``, ``step``, ``lr`` at the epoch's start, the epoch's means and
    validation metrics), and the final test row in the CSV."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history = History(run_dir, keep_before=0)
        self.lr = float("nan")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume, trainer.current_epoch is the restored epoch: rows from the lost epoch in flight go.
        self.history = History(self.run_dir, keep_before=trainer.current_epoch, write=trainer.is_global_zero)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step, "lr": self.lr}
        for key, value in trainer.callback_metrics.items():
            row[key] = float(value)
        self.history.append(row)


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


class ThroughputCallback(Callback):
    """:class:`Throughput` in Lightning's hooks (validation excluded: it runs before ``on_train_epoch_end``)."""

    def __init__(self, started: float) -> None:
        self.clock = Throughput(started)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.clock.device = pl_module.device
        self.clock.step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.clock.count(int(batch[1].shape[0]) * trainer.world_size)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.stop()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.stop()


def make_loggers(cfg: TrainConfig, run_dir: Path) -> list[Logger]:
    """The configured experiment tracker, if any (``metrics.csv`` is written by :class:`EpochHistory`)."""
    loggers: list[Logger] = []
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
    """Lightning's own checks of accelerator/devices/strategy/num_nodes (unknown strategy, more devices than
    present, ...) as a :class:`ConfigError`, before work (``engine.check_hardware`` ran the simple ones)."""
    devices = parse_devices(cfg.devices)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
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


def run_lightning(parts: RunParts, callbacks: list[Callback] | None = None) -> EngineOutcome:
    """Train ``parts`` with Lightning's Trainer, then test the best checkpoint (see the module doc)."""
    cfg, run_dir, data = parts.cfg, parts.run_dir, parts.data
    # fit seeded the generators before building the model (seed_all); Lightning seeds DataLoader workers from these
    os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"] = str(cfg.seed), "1"
    module = ClassifierModule(cfg, parts.model, parts.objective, schedule=parts.schedule, always_on=parts.always_on)
    module.mixup = parts.mixup
    module.channels_last = parts.speed["channels_last"]
    throughput = ThroughputCallback(parts.started)
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
    history = EpochHistory(run_dir)
    all_callbacks: list[Callback] = [best, history, *(callbacks or [])]
    all_callbacks += [PlaceOnDevice(data.device_loaders()), throughput]
    if cfg.val_every > 1:
        all_callbacks.append(ValidateEvery(cfg.val_every, cfg.epochs + cfg.cooldown_epochs - 1))
    first_reg = getattr(parts.schedule, "first_regularized_epoch", None)
    if cfg.save_preregularized and first_reg:
        all_callbacks.append(SavePreregularized(ckpt_dir / "preregularized.ckpt", first_reg))
    all_callbacks.extend(build_factor_callbacks(cfg))
    if cfg.model_ema:
        all_callbacks.append(ModelEma(cfg.model_ema_decay, warmup=cfg.model_ema_warmup))
    progress = show_progress(cfg.progress)
    if progress:
        all_callbacks.append(TQDMProgressBar())
    trainer = pl.Trainer(
        max_epochs=cfg.epochs + cfg.cooldown_epochs,
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        logger=make_loggers(cfg, run_dir) or False,
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
    resume = parts.resume_ckpt
    trainer.fit(module, data.train, data.val, ckpt_path=str(resume) if resume else None, weights_only=True)
    best_path = Path(best.best_model_path) if best.best_model_path else ckpt_dir / "last.ckpt"
    tested = {
        k: float(v)
        for k, v in trainer.test(module, data.test, ckpt_path=str(best_path), verbose=False, weights_only=True)[
            0
        ].items()
    }
    last_epoch = cfg.epochs + cfg.cooldown_epochs - 1
    history.history.append({}, extra=[{"epoch": last_epoch, "step": trainer.global_step, **tested}])
    rows = history.history.rows
    if best.best_model_score is not None:
        best_val_acc = float(best.best_model_score)
    else:  # e.g. a run whose validation never produced a score: the best of the recorded epochs
        scores = [row["val/acc"] for row in rows if "val/acc" in row]
        best_val_acc = max(scores) if scores else float("nan")
    return EngineOutcome(
        tested=tested,
        best_path=best_path,
        best_val_acc=best_val_acc,
        rows=rows,
        images_per_s=throughput.clock.images_per_s,
        first_step_s=throughput.clock.first_step_s,
        first_step_unix=throughput.clock.first_step_unix,
        writes_results=trainer.is_global_zero,
    )


class ModelEma(Callback):
    """:class:`losslab.runs.ema.EmaWeights` as a Lightning callback: updated after every optimizer step, swapped
    in for validation, test and checkpoints."""

    def __init__(self, decay: float, warmup: bool = False) -> None:
        self.weights = EmaWeights(decay, warmup)

    @property
    def ema(self) -> Any | None:
        return self.weights.ema

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights.start(pl_module.model)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.weights.update(pl_module.model, step=trainer.global_step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights.swap_in(pl_module.model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights.swap_out(pl_module.model)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.weights.into_checkpoint(pl_module.model, checkpoint)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.weights.pending_raw = checkpoint.get("ema_raw_state_dict")


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
