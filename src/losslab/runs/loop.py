"""The one training loop: any :class:`~losslab.runs.task.Task` on one device, or under ``torchrun`` with DDP.

Per epoch ``e``::

    task.start_epoch(e); train.sampler.set_epoch(e)          # seeded (seed, e) order when the sampler has one
    for batch in train:
        batch = task.prepare(batch on device)
        for each phase (one; a GAN: D then G):     # losslab.runs.task.task_phases
            zero_grad; for part in task.micro_batches(batch) (when the task has it, else batch itself):
                with autocast: total = phase.loss(part, e, log); backward(scale · total)   # the task's training_loss
                (under torchrun DDP all-reduces in the last part's backward only: no_sync before)
            unscale; phase.gradient_terms(e, log); clip; optimizer step
            schedule.step_batch() when the schedule has it (per-step schedules); phase.after_step()
        hooks.after_step
    a NaN/inf loss in the epoch -> TrainingDivergedError (nothing of this epoch is written)
    validate (every val_every epochs and the last); history.json and metrics.csv rows
    schedule.step(e + 1); checkpoints/last.ckpt (+ best.ckpt when settings.score improves strictly)

then the best checkpoint (else the last) is evaluated on the test split, when there is one. Step-level scalars are
summed on the device (batch-size weighted) and read once per epoch, so a step costs no host sync. The history row
is written before the epoch's checkpoints, so a kill between the two loses nothing: the resume redoes the epoch and
writes its row again. A checkpoint holds ``state_dict`` (each task module's weights under ``<name>.``),
``hyper_parameters``, ``optimizer_states``, ``lr_schedulers``, ``epoch``, ``global_step``, ``grad_scaler``,
``best_score`` and ``losslab_engine: plain`` (the classifier's Lightning engine writes the same keys); it is written
atomically after the epoch's schedule step, so a resume continues at epoch ``e + 1`` with that epoch's schedule.
``optimizer_states``/``lr_schedulers`` hold one entry per phase (one for a single optimizer), ``grad_scaler`` one
state per phase when there are several, and ``task`` the task's own ``state_dict()`` when it has one.

An experiment is a task plus :class:`LoopSettings` plus its data (``train``, ``val``, ``test`` iterables; ``val``
and ``test`` may be ``None``); :class:`LoopHook` objects add per-step work (the classifier's Frobenius-norm
recorder). Under ``torchrun`` a task that has ``distribute(wrap)`` gets its modules wrapped in
DistributedDataParallel; every optimizer parameter outside the wrapped modules has its gradient averaged over ranks
by the loop; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from losslab.errors import ConfigError, TrainingDivergedError
from losslab.runs import checkpoint as run_checkpoint
from losslab.runs.ema import EmaWeights
from losslab.runs.folder import RunSpec, claim
from losslab.runs.history import History, Throughput
from losslab.runs.progress import SUMMARY, Progress, progress_mode
from losslab.runs.task import Task, task_phases

#: The key a loop checkpoint carries (a Lightning checkpoint carries ``pytorch-lightning_version`` instead).
ENGINE_KEY = "losslab_engine"

DIVERGED_HINT = (
    "the run stopped and its last good checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. "
    "Lower --lr, add --gradient-clip (e.g. 1.0), or use --precision 32"
)


@dataclass
class LoopSettings:
    """What the loop needs besides the task and the data: where it writes and how it steps."""

    run_dir: Path  # the folder being written (the staging folder under --overwrite)
    epochs: int  # every epoch the run trains, cooldown included
    device: torch.device
    resume_ckpt: Path | None = None
    val_every: int = 1
    precision: str = "32"  # 32, 16-mixed (CUDA/MPS), bf16-mixed
    gradient_clip: float | None = None  # max global L2 norm of the gradients
    ema_decay: float | None = None  # EMA of task.modules()[ema_module]'s weights (validated, saved) when set
    ema_warmup: bool = False
    ema_module: str = "model"
    progress: Any = "auto"  # a --progress value (losslab.runs.progress_mode)
    progress_summary: dict[str, str] = field(default_factory=lambda: dict(SUMMARY))
    score: str | None = "val/acc"  # best.ckpt follows this validation metric (None: no best.ckpt)
    score_mode: str = "max"  # max or min
    hyper_parameters: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint
    started: float = 0.0  # time.perf_counter() when the run started (first-step latency)
    diverged_hint: str = DIVERGED_HINT
    resume_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # maps another writer's checkpoint
    throughput_column: str | None = None  # when set, each row holds the training items/s so far under this name


@dataclass
class LoopOutcome:
    """What a run reports back: the test metrics of the best checkpoint and the run's history and speed."""

    tested: dict[str, float]
    best_path: Path
    best_val_acc: float  # the best value of settings.score (named for the classifier's val/acc)
    rows: list[dict[str, Any]] = field(default_factory=list)  # history.json
    images_per_s: float = float("nan")  # training items per second
    first_step_s: float | None = None
    first_step_unix: float | None = None
    writes_results: bool = True  # False on DDP ranks other than 0


class LoopHook(Protocol):
    """Per-step work beside the task (all optional in practice: implement what you need, pass-through the rest)."""

    def start(self, loop: PlainLoop) -> None: ...
    def start_epoch(self, epoch: int) -> None: ...
    def after_step(self, epoch: int, batch_idx: int) -> None: ...
    def end_epoch(self, epoch: int) -> None: ...
    def after_checkpoints(self, loop: PlainLoop, epoch: int) -> None: ...


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
    """``precision`` on ``device``: the autocast context and, for 16-mixed on CUDA, the gradient scaler."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
        if precision == "16-mixed" and device.type not in ("cuda", "mps"):  # commands check this before any work
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
        tally = sum_over_ranks(tally, ranks, device)
    return {**(task.tally_metrics(stage, tally) if tally is not None else {}), **means.means(ranks)}


def sum_over_ranks(tally: Tensor | None, ranks: Ranks, device: torch.device) -> Tensor | None:
    """An evaluation tally summed over the ranks, each having evaluated its shard. A rank whose shard held no batch
    adds zeros of the others' length (the ranks' (length, 1) pairs are summed first); None when no rank had one."""
    have = torch.tensor([0.0, 0.0] if tally is None else [float(tally.numel()), 1.0], dtype=torch.float64)
    length, holders = ranks.sum(have).tolist()
    if holders == 0:
        return None
    local = tally if tally is not None else torch.zeros(int(length // holders), dtype=torch.float64, device=device)
    return ranks.sum(local)


def task_state(task: Task) -> dict[str, Tensor]:
    """The weights of every module of ``task`` under its name (``model.``/``objective.``: Lightning's layout)."""
    return {f"{name}.{k}": v for name, module in task.modules().items() for k, v in module.state_dict().items()}


def load_task_state(task: Task, state: dict[str, Tensor]) -> None:
    """Load :func:`task_state`'s dict back into the task's modules (strict)."""
    for name, module in task.modules().items():
        own = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        module.load_state_dict(own, strict=True)


def _hooks(hooks: Sequence[Any], method: str) -> list[Callable[..., None]]:
    return [getattr(hook, method) for hook in hooks if hasattr(hook, method)]


class PlainLoop:
    """One run of ``task`` over ``data`` (``train``/``val``/``test``) with ``settings`` (see the module doc)."""

    def __init__(self, task: Task, data: Any, settings: LoopSettings, hooks: Sequence[Any] = ()) -> None:
        self.task, self.data, self.settings, self.hooks = task, data, settings, list(hooks)
        self.device = settings.device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the listed GPU (--devices 1,) is also the current one
        for module in training_modules(task):
            module.to(self.device)
        self.ranks = Ranks(self.device)
        self.ddp: list[torch.nn.Module] = []  # the DistributedDataParallel wrappers made by wrap_ddp
        wrapped: list[torch.nn.Module] = []
        if self.ranks.world > 1:  # torchrun: DDP averages the wrapped modules' gradients in backward
            distribute = getattr(task, "distribute", None)
            if distribute is None:
                raise ConfigError(f"{type(task).__name__} does not support torchrun; run it in one process")
            wrapped = distribute(self.wrap_ddp)
        self.phases = task_phases(task)
        self.optimizer = self.phases[0].optimizer  # its lr is the row's ``lr``
        self.params = [[p for group in ph.optimizer.param_groups for p in group["params"]] for ph in self.phases]
        self.in_ddp = {id(p) for module in wrapped for p in module.parameters()}
        self.precisions = [Precision(settings.precision, self.device) for _ in self.phases]  # a loss scale each
        self.precision = self.precisions[0]
        self.ema = EmaWeights(settings.ema_decay, settings.ema_warmup) if settings.ema_decay is not None else None
        self.ckpt_dir = settings.run_dir / "checkpoints"
        self.start, self.step, self.best_score = 0, 0, None
        self.throughput = Throughput(settings.started, self.device)
        mode = progress_mode(settings.progress) if self.ranks.writes else "off"
        self.progress = Progress(mode, settings.epochs, settings.progress_summary)

    def wrap_ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel on this rank's device."""
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ddp.append(ddp)
        return ddp

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Under torchrun with gradient accumulation: DDP all-reduces the gradients in the backward of a step's
        ``last`` micro-batch only (the summed local gradients of the step, once); the others run in ``no_sync``."""
        stack = contextlib.ExitStack()
        if not last:
            for ddp in self.ddp:
                stack.enter_context(ddp.no_sync())
        return stack

    @property
    def ema_target(self) -> torch.nn.Module:
        return self.task.modules()[self.settings.ema_module]

    def resume(self) -> None:
        """Continue from ``settings.resume_ckpt`` (a loop checkpoint) at the epoch after the one it saved."""
        raw_state = None
        if self.settings.resume_ckpt is not None:
            state = run_checkpoint.load(self.settings.resume_ckpt, map_location=self.device)
            if self.settings.resume_view is not None:
                state = self.settings.resume_view(state)
            load_task_state(self.task, state["state_dict"])
            self.load_phases(state)
            self.start, self.step = int(state["epoch"]) + 1, int(state["global_step"])
            self.best_score = state.get("best_score")
            self.step_schedules(self.start)
            raw_state = state.get("ema_raw_state_dict")
        if self.ema is not None:  # a resumed state_dict held the EMA weights: they become the average again
            self.ema.start(self.ema_target, raw_state=raw_state)
        for start in _hooks(self.hooks, "start"):
            start(self)

    def load_phases(self, state: dict[str, Any]) -> None:
        """Each phase's optimizer, schedule and loss scale, and the task's own state, from a checkpoint."""
        scalers = state.get("grad_scaler")
        scalers = scalers if len(self.phases) > 1 and scalers is not None else [scalers]
        for i, (phase, precision) in enumerate(zip(self.phases, self.precisions, strict=True)):
            phase.optimizer.load_state_dict(state["optimizer_states"][i])
            if phase.schedule is not None:
                phase.schedule.load_state_dict(state["lr_schedulers"][i])
            if precision.scaler is not None and scalers[i]:
                precision.scaler.load_state_dict(scalers[i])
        load_own = getattr(self.task, "load_state_dict", None)
        if load_own is not None:
            load_own(state["task"])

    def step_schedules(self, epoch: int) -> None:
        for phase in self.phases:
            if phase.schedule is not None:
                phase.schedule.step(epoch)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training split; the epoch's logged means (raises if a loss was NaN/inf)."""
        task, optimizer = self.task, self.optimizer
        for module in training_modules(task):
            module.train()
        task.start_epoch(epoch)
        sampler = getattr(self.data.train, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        means, lr = EpochMeans(), optimizer.param_groups[0]["lr"]
        after_step = _hooks(self.hooks, "after_step")
        micro_batches = getattr(task, "micro_batches", None) or (lambda batch: (batch,))  # gradient accumulation
        for start_epoch in _hooks(self.hooks, "start_epoch"):
            start_epoch(epoch)
        for i, batch in enumerate(self.progress.batches(self.data.train, epoch)):
            batch = task.prepare(to_device(batch, self.device))
            self.throughput.step()
            means.batch_size = task.batch_size(batch)
            self.throughput.count(means.batch_size * self.ranks.world)
            for phase, precision, params in zip(self.phases, self.precisions, self.params, strict=True):
                phase.optimizer.zero_grad(set_to_none=True)
                parts = list(micro_batches(batch))
                for k, part in enumerate(parts):  # one backward each: memory is one micro-batch's
                    with self.gradient_sync(last=k == len(parts) - 1):  # the forward and the backward
                        with precision.autocast():
                            total = phase.loss(part, epoch, means.log)
                        precision.backward(total)
                self.average_other_grads(params)
                precision.unscale(phase.optimizer)
                if phase.gradient_terms is not None:
                    phase.gradient_terms(epoch, means.log)
                if self.settings.gradient_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.settings.gradient_clip)
                precision.step(phase.optimizer)
                step_batch = getattr(phase.schedule, "step_batch", None)  # a per-step schedule (warmup, inverse sqrt)
                if step_batch is not None:
                    step_batch()
                if phase.after_step is not None:
                    phase.after_step()
            self.step += 1
            for hook in after_step:
                hook(epoch, i)
            if self.ema is not None:
                self.ema.update(self.ema_target, step=self.step)
        self.throughput.stop()
        bad = task.take_nonfinite()
        if self.ranks.world > 1:  # a NaN on any rank stops every rank
            bad = self.ranks.sum(torch.zeros((), device=self.device) if bad is None else bad.float()) > 0
        if bad is not None and bool(bad):
            message = f"training diverged: the loss became NaN or infinite in epoch {epoch}; "
            raise TrainingDivergedError(message + self.settings.diverged_hint)
        for end_epoch in _hooks(self.hooks, "end_epoch"):
            end_epoch(epoch)
        row = {"epoch": epoch, "step": self.step, "lr": lr, **means.means(self.ranks)}
        if self.settings.throughput_column is not None:
            row[self.settings.throughput_column] = self.throughput.images_per_s
        return row

    def average_other_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Under torchrun: average the gradients of ``params`` (this phase's) that DDP does not (parameters outside
        the wrapped modules) over ranks."""
        if self.ranks.world == 1:
            return
        for param in params:
            if id(param) not in self.in_ddp and param.grad is not None:
                param.grad.copy_(self.ranks.sum(param.grad) / self.ranks.world)

    def validate(self) -> dict[str, float]:
        """Validation metrics and statistics, on the EMA weights when there are some."""
        if self.ema is not None:
            self.ema.swap_in(self.ema_target)
        out = evaluate(self.task, self.data.val, "val", self.device, self.precision, self.ranks)
        out.update(self.task.validation_statistics(self.optimizer.param_groups[0]["lr"]))
        if self.ema is not None:
            self.ema.swap_out(self.ema_target)
        return out

    def save(self, path: Path, epoch: int) -> None:
        """A checkpoint in the layout of the module doc, written atomically (:mod:`losslab.runs`)."""
        scalers = [None if p.scaler is None else p.scaler.state_dict() for p in self.precisions]
        checkpoint = {
            ENGINE_KEY: "plain",
            "epoch": epoch,
            "global_step": self.step,
            "state_dict": task_state(self.task),
            "hyper_parameters": self.settings.hyper_parameters,
            "optimizer_states": [phase.optimizer.state_dict() for phase in self.phases],
            "lr_schedulers": [None if ph.schedule is None else ph.schedule.state_dict() for ph in self.phases],
            "grad_scaler": scalers[0] if len(scalers) == 1 else scalers,
            "best_score": self.best_score,
        }
        own_state = getattr(self.task, "state_dict", None)
        if own_state is not None:
            checkpoint["task"] = own_state()
        if self.ema is not None:
            self.ema.into_checkpoint(self.ema_target, checkpoint, prefix=f"{self.settings.ema_module}.")
        if self.ranks.writes:  # under torchrun rank 0 writes; every rank holds the same weights
            run_checkpoint.save(path, checkpoint)

    def improved(self, score: float | None) -> bool:
        """Is ``score`` strictly better than the best so far (by ``settings.score_mode``)?"""
        if score is None or score != score:  # missing or NaN never improves
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.settings.score_mode == "max" else score < self.best_score

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Step the schedule, then write best.ckpt on a strictly better score and last.ckpt."""
        self.step_schedules(epoch + 1)
        score = row.get(self.settings.score) if self.settings.score is not None else None
        if self.improved(score):
            self.best_score = score
            self.save(self.ckpt_dir / "best.ckpt", epoch)
        self.save(self.ckpt_dir / "last.ckpt", epoch)
        for after in _hooks(self.hooks, "after_checkpoints"):
            after(self, epoch)
        self.ranks.barrier()  # the checkpoints are on disk before any rank goes on (and may read them)

    def run(self) -> LoopOutcome:
        """Train every remaining epoch, then test the best checkpoint (the last without one)."""
        self.resume()
        history = History(self.settings.run_dir, keep_before=self.start, write=self.ranks.writes)
        self.task.attach()
        total = self.settings.epochs
        try:
            for epoch in range(self.start, total):
                row = self.train_epoch(epoch)
                validates = (epoch + 1) % self.settings.val_every == 0 or epoch == total - 1
                if validates and getattr(self.data, "val", None) is not None:
                    row.update(self.validate())
                history.append(row)  # first: a resume from the epoch before drops this row and writes it again
                self.end_epoch(epoch, row)
                self.progress.close(row)
        finally:
            self.progress.close({})
            self.task.detach()
        best = self.ckpt_dir / "best.ckpt"
        tested_path = best if best.is_file() else self.ckpt_dir / "last.ckpt"
        tested: dict[str, float] = {}
        if getattr(self.data, "test", None) is not None:
            tested_ckpt = run_checkpoint.load(tested_path, map_location=self.device)
            load_task_state(self.task, tested_ckpt["state_dict"])
            tested = evaluate(self.task, self.data.test, "test", self.device, self.precision, self.ranks)
            history.append({}, extra=[{"epoch": total - 1, "step": self.step, **tested}])
        scores = [row[self.settings.score] for row in history.rows if self.settings.score in row]
        pick = max if self.settings.score_mode == "max" else min
        best_score = self.best_score if self.best_score is not None else pick(scores, default=float("nan"))
        return LoopOutcome(
            tested=tested,
            best_path=tested_path,
            best_val_acc=best_score,
            rows=history.rows,
            images_per_s=self.throughput.images_per_s,
            first_step_s=self.throughput.first_step_s,
            first_step_unix=self.throughput.first_step_unix,
            writes_results=self.ranks.writes,
        )


def run_loop(task: Task, data: Any, settings: LoopSettings, hooks: Sequence[Any] = ()) -> LoopOutcome:
    """Train ``task`` in this process on ``settings.device`` (DDP under torchrun), then test its best checkpoint."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as Lightning sets it
    torch.use_deterministic_algorithms(True, warn_only=True)
    return PlainLoop(task, data, settings, hooks).run()


def run_experiment(
    spec: RunSpec,
    task: Task,
    data: Any,
    settings: LoopSettings,
    hooks: Sequence[Any] = (),
    finish: Callable[[LoopOutcome, Path], dict[str, Any]] | None = None,
) -> tuple[LoopOutcome, Path]:
    """A whole experiment: claim the run folder of ``spec`` (name, lock, marker, staged ``--overwrite``, resume
    checks), write ``config.yaml``, run ``task`` in the loop (resuming from the claimed checkpoint), then write
    ``result.json`` (the test metrics, best score, epochs and speed, plus ``finish(outcome, work_dir)``) and
    commit. Returns the outcome and the final run folder. ``settings.run_dir``/``resume_ckpt`` are set here."""
    with claim(spec) as run:
        work = run.create()
        run.write_config()
        outcome = run_loop(task, data, replace(settings, run_dir=work, resume_ckpt=run.resume_ckpt), hooks)
        result = {
            "run_dir": str(run.final),
            "epochs": settings.epochs,
            "tested": outcome.tested,
            "best_score": {settings.score: outcome.best_val_acc},
            "speed": {"items_per_s": outcome.images_per_s, "first_step_s": outcome.first_step_s},
        }
        if finish is not None:
            result.update(finish(outcome, work))
        if outcome.writes_results:
            run.write_result(result)
            run.commit()
    return outcome, run.final
