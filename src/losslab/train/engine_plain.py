"""The plain engine of ``fit``: one process, one device, a PyTorch loop around :class:`ClassifierTask`.

Per epoch ``e`` (``losslab.train.engine`` says when ``fit`` picks this engine)::

    lr = schedule(e); regularizers of e on
    for x, y in train:                       # train.sampler.set_epoch(e): seeded (seed, e) order
        zero_grad; with autocast: total = task.training_loss(x, y)
        backward(scale · total); unscale; task.gradient_terms; clip; optimizer step
    a NaN/inf loss in the epoch -> TrainingDivergedError (nothing of this epoch is written)
    validate (every val_every epochs and the last); history.json and metrics.csv rows
    schedule.step(e + 1); checkpoints/last.ckpt (+ best.ckpt on a strictly better val/acc)

then the best checkpoint's weights are tested. Step-level scalars are summed on the device (batch-size weighted)
and read once per epoch, so a step costs no host sync. Within a step the order is Lightning's (zero_grad before
backward; gradient-side terms after the AMP unscale, before clipping), so on CPU both engines train the same
weights from the same seed (Lightning steps the schedule before validating, this loop after; neither changes a
weight). The history row is written before the epoch's checkpoints, so a kill between the two loses nothing: the
resume redoes the epoch and writes its row again. Checkpoints hold the Lightning engine's keys (``state_dict``
with ``model.``/``objective.`` prefixes, ``hyper_parameters``, ``optimizer_states``, ``lr_schedulers``, ``epoch``,
``global_step``) plus ``losslab_engine: plain`` and the best score; they are written atomically after the
epoch's schedule step, so a resume continues at epoch ``e + 1`` with that epoch's learning rate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from losslab.errors import ConfigError
from losslab.layers.factor_norms import FrobNormFollower, FrobNormRecorder
from losslab.runs import checkpoint as run_checkpoint
from losslab.runs.history import History, Throughput
from losslab.runs.progress import Progress, progress_mode
from losslab.train.build import training_device
from losslab.train.ema import EmaWeights
from losslab.train.engine import ENGINE_KEY, EngineOutcome, RunParts
from losslab.train.task import EVAL_TALLY, ClassifierTask, diverged_error, tally_metrics


class EpochMeans:
    """Batch-size-weighted means of logged scalars over one epoch, summed on their device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor | float] = {}
        self.weights: dict[str, int] = {}
        self.batch_size = 1

    def log(self, name: str, value: Tensor | float, prog_bar: bool = False) -> None:
        weighted = value.detach().float() * self.batch_size if isinstance(value, Tensor) else value * self.batch_size
        self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
        self.weights[name] = self.weights.get(name, 0) + self.batch_size

    def means(self) -> dict[str, float]:
        return {name: float(total) / self.weights[name] for name, total in self.sums.items()}


class Precision:
    """``cfg.precision`` on ``device``: the autocast context and, for 16-mixed on CUDA, the gradient scaler."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
        if precision == "16-mixed" and device.type not in ("cuda", "mps"):  # fit checks this before any work
            raise ConfigError(f"precision='16-mixed' needs a GPU (this run trains on {device})")
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, total: Tensor) -> None:
        (self.scaler.scale(total) if self.scaler is not None else total).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def _to(batch: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    task: ClassifierTask, loader: Iterable[Any], stage: str, device: torch.device, precision: Precision
) -> dict[str, float]:
    """``stage/acc``, ``stage/ce`` (test: ``test/top5``, ``test/n``) and logit statistics over ``loader``."""
    was_training = task.model.training
    task.model.eval()
    tally = torch.zeros(len(EVAL_TALLY), dtype=torch.float64, device=device)
    means = EpochMeans()
    for batch in loader:
        x, y = task.prepare(_to(batch, device))
        means.batch_size = int(y.shape[0])
        with precision.autocast():
            tally += task.eval_tally((x, y), stage, means.log)
    task.model.train(was_training)
    return {**tally_metrics(stage, tally), **means.means()}


def model_state(parts: RunParts) -> dict[str, Tensor]:
    """The weights as the Lightning engine stores them (``model.``/``objective.`` prefixes)."""
    state = {f"model.{k}": v for k, v in parts.model.state_dict().items()}
    state.update({f"objective.{k}": v for k, v in parts.objective.state_dict().items()})
    return state


def load_model_state(parts: RunParts, state: dict[str, Tensor]) -> None:
    for prefix, module in (("model.", parts.model), ("objective.", parts.objective)):
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)


class PlainLoop:
    """One run of the plain engine: the optimizer, precision, EMA and history of ``parts`` on one device."""

    def __init__(self, parts: RunParts) -> None:
        cfg, data = parts.cfg, parts.data
        self.parts, self.cfg, self.data = parts, cfg, data
        self.device = training_device(cfg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the listed GPU (--devices 1,) is also the current one
        parts.model.to(self.device)
        parts.objective.to(self.device)
        for loader in data.device_loaders():
            loader.to(self.device)
        self.task = ClassifierTask(
            cfg, parts.model, parts.objective, schedule=parts.schedule, always_on=parts.always_on
        )
        self.task.mixup, self.task.channels_last = parts.mixup, parts.speed["channels_last"]
        self.optimizer, self.schedule = self.task.optimizer_and_schedule()
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.precision = Precision(cfg.precision, self.device)
        self.ema = EmaWeights(cfg.model_ema_decay, cfg.model_ema_warmup) if cfg.model_ema else None
        # the normalization experiment (factorized.md §8): record or follow ||U(M)V^T||_F after every step
        self.recorder = FrobNormRecorder(cfg.record_frob_norms) if cfg.record_frob_norms is not None else None
        self.follower = FrobNormFollower(cfg.normalize) if cfg.normalize is not None else None
        self.total_epochs = cfg.epochs + cfg.cooldown_epochs
        self.ckpt_dir = parts.run_dir / "checkpoints"
        self.start, self.step, self.best_score = 0, 0, None
        self.throughput = Throughput(parts.started, self.device)
        self.progress = Progress(progress_mode(cfg.progress), self.total_epochs)

    def resume(self) -> None:
        """Continue from ``parts.resume_ckpt`` (a plain-engine checkpoint) at the epoch after the one it saved."""
        raw_state = None
        if self.parts.resume_ckpt is not None:
            state = run_checkpoint.load(self.parts.resume_ckpt, map_location=self.device)
            load_model_state(self.parts, state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer_states"][0])
            self.schedule.load_state_dict(state["lr_schedulers"][0])
            if self.precision.scaler is not None and state.get("grad_scaler"):
                self.precision.scaler.load_state_dict(state["grad_scaler"])
            self.start, self.step = int(state["epoch"]) + 1, int(state["global_step"])
            self.best_score = state.get("best_score")
            self.schedule.step(self.start)
            raw_state = state.get("ema_raw_state_dict")
        if self.ema is not None:  # a resumed state_dict held the EMA weights: they become the average again
            self.ema.start(self.parts.model, raw_state=raw_state)
        if self.recorder is not None:
            self.recorder.start(self.parts.model, keep_epochs=self.start)
        if self.follower is not None:
            self.follower.start(self.parts.model, len(self.data.train), self.total_epochs)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training split; the epoch's logged means (raises if a loss was NaN/inf)."""
        model, task, optimizer, precision = self.parts.model, self.task, self.optimizer, self.precision
        model.train()
        task.start_epoch(epoch)
        self.data.train.sampler.set_epoch(epoch)
        means, lr = EpochMeans(), optimizer.param_groups[0]["lr"]
        if self.follower is not None:
            self.follower.start_epoch()
        for i, batch in enumerate(self.progress.batches(self.data.train, epoch)):
            x, y = task.prepare(_to(batch, self.device))  # (B, C, H, W), (B,)
            self.throughput.step()
            self.throughput.count(int(y.shape[0]))
            means.batch_size = int(y.shape[0])
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                total = task.training_loss((x, y), epoch, means.log)
            precision.backward(total)
            precision.unscale(optimizer)
            task.gradient_terms(epoch, means.log)
            if self.cfg.gradient_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.gradient_clip)
            precision.step(optimizer)
            self.step += 1
            for hook in (self.recorder, self.follower):
                if hook is not None:
                    hook.after_step(epoch, i)
            if self.ema is not None:
                self.ema.update(model, step=self.step)
        self.throughput.stop()
        bad = task.take_nonfinite()
        if bad is not None and bool(bad):
            raise diverged_error(epoch)
        for hook in (self.recorder, self.follower):
            if hook is not None:
                hook.end_epoch()
        return {"epoch": epoch, "step": self.step, "lr": lr, **means.means()}

    def validate(self) -> dict[str, float]:
        """Validation metrics and statistics, on the EMA weights when there are some."""
        if self.ema is not None:
            self.ema.swap_in(self.parts.model)
        out = evaluate(self.task, self.data.val, "val", self.device, self.precision)
        out.update(self.task.validation_statistics(self.optimizer.param_groups[0]["lr"]))
        if self.ema is not None:
            self.ema.swap_out(self.parts.model)
        return out

    def save(self, path: Path, epoch: int) -> None:
        """A checkpoint in the Lightning engine's layout (module doc), written atomically (:mod:`losslab.runs`)."""
        checkpoint = {
            ENGINE_KEY: "plain",
            "epoch": epoch,
            "global_step": self.step,
            "state_dict": model_state(self.parts),
            "hyper_parameters": {"config": self.cfg.to_dict()},
            "optimizer_states": [self.optimizer.state_dict()],
            "lr_schedulers": [self.schedule.state_dict()],
            "grad_scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "best_score": self.best_score,
        }
        if self.ema is not None:
            self.ema.into_checkpoint(self.parts.model, checkpoint)
        run_checkpoint.save(path, checkpoint)

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Step the schedule, then write last.ckpt, best.ckpt on a strictly better val/acc, preregularized.ckpt."""
        self.schedule.step(epoch + 1)
        score = row.get("val/acc")
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score = score
            self.save(self.ckpt_dir / "best.ckpt", epoch)
        self.save(self.ckpt_dir / "last.ckpt", epoch)
        first_reg = getattr(self.parts.schedule, "first_regularized_epoch", None)
        if self.cfg.save_preregularized and first_reg and epoch == first_reg - 1:
            self.save(self.ckpt_dir / "preregularized.ckpt", epoch)

    def run(self) -> EngineOutcome:
        """Train every remaining epoch, then test the best checkpoint."""
        self.resume()
        history = History(self.parts.run_dir, keep_before=self.start)
        self.task.attach()
        try:
            for epoch in range(self.start, self.total_epochs):
                row = self.train_epoch(epoch)
                if (epoch + 1) % self.cfg.val_every == 0 or epoch == self.total_epochs - 1:
                    row.update(self.validate())
                history.append(row)  # first: a resume from the epoch before drops this row and writes it again
                self.end_epoch(epoch, row)
                self.progress.close(row)
        finally:
            self.progress.close({})
            self.task.detach()
        best = self.ckpt_dir / "best.ckpt"
        tested_path = best if best.is_file() else self.ckpt_dir / "last.ckpt"
        tested_ckpt = run_checkpoint.load(tested_path, map_location=self.device)
        load_model_state(self.parts, tested_ckpt["state_dict"])
        tested = evaluate(self.task, self.data.test, "test", self.device, self.precision)
        history.append({}, extra=[{"epoch": self.total_epochs - 1, "step": self.step, **tested}])
        scores = [row["val/acc"] for row in history.rows if "val/acc" in row]
        best_val = self.best_score if self.best_score is not None else max(scores, default=float("nan"))
        return EngineOutcome(
            tested=tested,
            best_path=tested_path,
            best_val_acc=best_val,
            rows=history.rows,
            images_per_s=self.throughput.images_per_s,
            first_step_s=self.throughput.first_step_s,
            first_step_unix=self.throughput.first_step_unix,
        )


def run_plain(parts: RunParts) -> EngineOutcome:
    """Train ``parts`` in this process on one device, then test the best checkpoint (see the module doc)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as Lightning sets it
    torch.use_deterministic_algorithms(True, warn_only=True)
    return PlainLoop(parts).run()
