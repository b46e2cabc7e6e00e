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
from losslab.runs.task import Task
from losslab.train.build import training_device
from losslab.train.ema import EmaWeights
from losslab.train.engine import ENGINE_KEY, EngineOutcome, RunParts
from losslab.train.task import ClassifierTask, diverged_error


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

    def means(self, ranks: Ranks | None = None) -> dict[str, float]:
        """The means over this process's batches, or over every rank's (sums and weights summed over ranks)."""
        if ranks is None or ranks.world == 1:
            return {name: float(total) / self.weights[name] for name, total in self.sums.items()}
        names = sorted(self.sums)  # the same names on every rank: they run the same code on their shard
        packed = torch.tensor([[float(self.sums[n]), float(self.weights[n])] for n in names], dtype=torch.float64)
        total = ranks.sum(packed)
        return {name: float(row[0]) / float(row[1]) for name, row in zip(names, total, strict=True)}


class Ranks:
    """This process's place in a ``torchrun`` launch (one process, rank 0, without one): rank 0 writes the run
    folder; sums (metrics, evaluation tallies) are all-reduced so every rank sees the global values."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self.on = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.on else 1
        self.rank = dist.get_rank() if self.on else 0
        self.device = device if device.type == "cuda" else torch.device("cpu")  # gloo reduces CPU tensors

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over ranks (a new tensor on the caller's device)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        moved = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written the checkpoints the others read)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


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


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or tuples/lists/dicts of them) on ``device``, copied asynchronously from pinned memory."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def training_modules(task: Task) -> list[torch.nn.Module]:
    return [m for m in task.modules().values() if isinstance(m, torch.nn.Module)]


@torch.no_grad()
def evaluate(
    task: Task,
    loader: Iterable[Any],
    stage: str,
    device: torch.device,
    precision: Precision,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """``task.tally_metrics`` of the summed ``task.eval_tally`` over ``loader`` (modules in eval mode), plus the
    means of what the task logged (classifier: ``stage/acc``, ``stage/ce``, test ``top5``/``n``, logit statistics)."""
    modes = [(module, module.training) for module in training_modules(task)]
    for module, _ in modes:
        module.eval()
    tally: Tensor | None = None
    means = EpochMeans()
    for batch in loader:
        batch = task.prepare(to_device(batch, device))
        means.batch_size = task.batch_size(batch)
        with precision.autocast():
            sums = task.eval_tally(batch, stage, means.log)
        tally = sums if tally is None else tally + sums
    for module, was_training in modes:
        module.train(was_training)
    if ranks is not None and ranks.world > 1:  # every rank evaluated its shard: the tally is a sum over ranks
        local = tally if tally is not None else torch.zeros(0, dtype=torch.float64, device=device)
        tally = ranks.sum(local)
    return {**(task.tally_metrics(stage, tally) if tally is not None else {}), **means.means(ranks)}


def task_state(task: Task) -> dict[str, Tensor]:
    """The weights of every module of ``task`` under its name (``model.``/``objective.``: Lightning's layout)."""
    return {f"{name}.{k}": v for name, module in task.modules().items() for k, v in module.state_dict().items()}


def load_task_state(task: Task, state: dict[str, Tensor]) -> None:
    """Load :func:`task_state`'s dict back into the task's modules (strict)."""
    for name, module in task.modules().items():
        own = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        module.load_state_dict(own, strict=True)


class PlainLoop:
    """One run of the plain engine: the optimizer, precision, EMA and history of ``parts`` on one device."""

    def __init__(self, parts: RunParts) -> None:
        cfg, data = parts.cfg, parts.data
        self.parts, self.cfg, self.data = parts, cfg, data
        self.device = training_device(cfg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the listed GPU (--devices 1,) is also the current one
        for loader in data.device_loaders():
            loader.to(self.device)
        classifier = ClassifierTask(
            cfg, parts.model, parts.objective, schedule=parts.schedule, always_on=parts.always_on
        )
        classifier.mixup, classifier.channels_last = parts.mixup, parts.speed["channels_last"]
        self.task: Task = classifier  # from here on the loop uses only the task protocol (losslab.runs.task)
        for module in training_modules(self.task):
            module.to(self.device)
        self.ranks = Ranks(self.device)
        if self.ranks.world > 1:  # torchrun: DDP averages the model's gradients in backward; other params by hand
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            classifier.forward_model = DistributedDataParallel(parts.model, device_ids=ids)
        self.other_params = [p for p in parts.objective.parameters() if p.requires_grad]
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
        self.progress = Progress(progress_mode(cfg.progress) if self.ranks.writes else "off", self.total_epochs)

    def resume(self) -> None:
        """Continue from ``parts.resume_ckpt`` (a plain-engine checkpoint) at the epoch after the one it saved."""
        raw_state = None
        if self.parts.resume_ckpt is not None:
            state = run_checkpoint.load(self.parts.resume_ckpt, map_location=self.device)
            load_task_state(self.task, state["state_dict"])
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
        for module in training_modules(task):
            module.train()
        task.start_epoch(epoch)
        self.data.train.sampler.set_epoch(epoch)
        means, lr = EpochMeans(), optimizer.param_groups[0]["lr"]
        if self.follower is not None:
            self.follower.start_epoch()
        for i, batch in enumerate(self.progress.batches(self.data.train, epoch)):
            batch = task.prepare(to_device(batch, self.device))  # classifier: (B, C, H, W), (B,)
            self.throughput.step()
            means.batch_size = task.batch_size(batch)
            self.throughput.count(means.batch_size * self.ranks.world)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                total = task.training_loss(batch, epoch, means.log)
            precision.backward(total)
            self.average_other_grads()
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
        if self.ranks.world > 1:  # a NaN on any rank stops every rank
            bad = self.ranks.sum(torch.zeros((), device=self.device) if bad is None else bad.float()) > 0
        if bad is not None and bool(bad):
            raise diverged_error(epoch)
        for hook in (self.recorder, self.follower):
            if hook is not None:
                hook.end_epoch()
        return {"epoch": epoch, "step": self.step, "lr": lr, **means.means(self.ranks)}

    def average_other_grads(self) -> None:
        """Under torchrun: average the gradients DDP does not (the objective's own parameters) over ranks."""
        if self.ranks.world == 1:
            return
        for param in self.other_params:
            if param.grad is not None:
                param.grad.copy_(self.ranks.sum(param.grad) / self.ranks.world)

    def validate(self) -> dict[str, float]:
        """Validation metrics and statistics, on the EMA weights when there are some."""
        if self.ema is not None:
            self.ema.swap_in(self.parts.model)
        out = evaluate(self.task, self.data.val, "val", self.device, self.precision, self.ranks)
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
            "state_dict": task_state(self.task),
            "hyper_parameters": {"config": self.cfg.to_dict()},
            "optimizer_states": [self.optimizer.state_dict()],
            "lr_schedulers": [self.schedule.state_dict()],
            "grad_scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "best_score": self.best_score,
        }
        if self.ema is not None:
            self.ema.into_checkpoint(self.parts.model, checkpoint)
        if self.ranks.writes:  # under torchrun rank 0 writes; every rank holds the same weights
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
        self.ranks.barrier()  # the checkpoints are on disk before any rank goes on (and may read them)

    def run(self) -> EngineOutcome:
        """Train every remaining epoch, then test the best checkpoint."""
        self.resume()
        history = History(self.parts.run_dir, keep_before=self.start, write=self.ranks.writes)
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
        load_task_state(self.task, tested_ckpt["state_dict"])
        tested = evaluate(self.task, self.data.test, "test", self.device, self.precision, self.ranks)
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
            writes_results=self.ranks.writes,
        )


def run_plain(parts: RunParts) -> EngineOutcome:
    """Train ``parts`` in this process on one device, then test the best checkpoint (see the module doc)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as Lightning sets it
    torch.use_deterministic_algorithms(True, warn_only=True)
    return PlainLoop(parts).run()
