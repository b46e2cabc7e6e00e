"""The task protocol: what the plain training loop (``losslab.train.engine_plain``) asks of an experiment's step.

A task owns its modules, its loss and its evaluation; the loop owns everything around them (device placement,
precision and loss scaling, clipping, EMA, the epoch order, the NaN check, history, checkpoints, resume, progress,
throughput). Per training batch the loop calls, in this order::

    batch = task.prepare(batch_on_device)
    optimizer.zero_grad(); with autocast: total = task.training_loss(batch, epoch, log)
    backward(scale * total); unscale; task.gradient_terms(epoch, log); clip; optimizer step

and per evaluation batch ``tally += task.eval_tally(batch, stage, log)`` (a fixed-length float64 vector of sums, so
a pass costs no host sync and sums exactly over shards), then ``task.tally_metrics(stage, tally)``. A checkpoint
holds ``{f"{name}.{key}": tensor}`` for each ``name, module in task.modules().items()`` plus the optimizer and
schedule states. :class:`losslab.train.task.ClassifierTask` is the classifier's task; ``tests/train`` checks that
the plain loop uses nothing else of it.

Several optimizers (a GAN: the discriminator's step, then the generator's, on the same batch): the task defines
``phases()``, a list of :class:`Phase` (optimizer, schedule, loss, gradient terms, an action after the step), and
needs no ``training_loss``/``gradient_terms``/``optimizer_and_schedule``. Per batch the loop runs each phase in
order with the single phase's recipe::

    for phase in task_phases(task):          # one phase built from the three members above when there is no phases()
        phase.optimizer.zero_grad(); with autocast: total = phase.loss(batch, epoch, log)
        backward(scale_i * total); unscale; phase.gradient_terms(epoch, log); clip this optimizer's parameters
        optimizer step; scale_i update; phase.after_step()

Each phase has its own loss scale (16-mixed), so an overflow in one skips only that phase's step. The checkpoint's
``optimizer_states`` and ``lr_schedulers`` lists hold one entry per phase, in order (one for a single-phase task, as
before). A task whose state is more than its modules' (counters, the RNG a step draws from) defines
``state_dict()``/``load_state_dict()``; the checkpoint holds it under ``task``, and only for such a task. A task
run without validation and test data (``val``/``test`` None: the GAN, whose metrics need all samples at once and
are computed after the loop) needs no ``eval_tally``/``tally_metrics``/``validation_statistics``.
:class:`losslab.gan.train.GanTask` is the two-phase example; ``tests/runs/test_phases.py`` checks the order and the
resume of both optimizers.

Optional: ``task.micro_batches(batch)`` (gradient accumulation: the loss and backward run on each part, then one
optimizer step per phase; :class:`losslab.lm.finetune.CausalLMTask`), ``schedule.step_batch()`` (called after every
optimizer step: per-step schedules), ``task.distribute(wrap)`` (DDP under torchrun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class LogFn(Protocol):
    """How a step reports a scalar: the loop keeps the batch-size-weighted mean over the epoch."""

    def __call__(self, name: str, value: Any, prog_bar: bool = False) -> None: ...


@runtime_checkable
class Task(Protocol):
    """One experiment's step, evaluation and state, as the plain loop runs it (see the module doc)."""

    def modules(self) -> dict[str, Any]:
        """The modules a checkpoint holds, by name (``model``, ``objective``, ...); the loop moves them to the
        device and stores ``state_dict()`` of each under its name."""
        ...

    def optimizer_and_schedule(self) -> tuple[Any, Any]:
        """The optimizer and its per-epoch schedule (``step(epoch)``, ``state_dict``, ``load_state_dict``)."""
        ...

    def attach(self) -> None:
        """Install hooks on the modules before the first epoch (regularizers)."""
        ...

    def detach(self) -> None:
        """Remove them after the last epoch (also after a failure)."""
        ...

    def start_epoch(self, epoch: int) -> None:
        """Switch per-epoch behaviour (a regularization schedule) for ``epoch``."""
        ...

    def prepare(self, batch: Any) -> Any:
        """The device batch as the modules take it (memory format, dtype)."""
        ...

    def batch_size(self, batch: Any) -> int:
        """The number of samples in ``batch`` (weights the epoch means and counts throughput)."""
        ...

    def training_loss(self, batch: Any, epoch: int, log: LogFn) -> Any:
        """The scalar tensor to backpropagate for ``batch`` (the task loss plus loss-side terms)."""
        ...

    def gradient_terms(self, epoch: int, log: LogFn) -> None:
        """Terms applied to the gradients after the AMP unscale and before clipping."""
        ...

    def take_nonfinite(self) -> Any:
        """A bool tensor: was a training loss NaN/inf since the last call (None before any step)."""
        ...

    def eval_tally(self, batch: Any, stage: str, log: LogFn) -> Any:
        """The float64 sums of one evaluation batch (the same length for every batch)."""
        ...

    def tally_metrics(self, stage: str, tally: Any) -> dict[str, float]:
        """The metrics (``stage/acc``, ...) from a pass's summed tally."""
        ...

    def validation_statistics(self, lr: float) -> dict[str, float]:
        """Extra statistics logged with every validation (may be empty)."""
        ...


@dataclass
class Phase:
    """One optimizer's part of a training step (module doc): ``loss(batch, epoch, log)`` is backpropagated and
    ``optimizer`` stepped; ``schedule`` (``step(epoch)``, state) is stepped per epoch, None for a constant lr."""

    name: str
    optimizer: Any
    loss: Callable[[Any, int, LogFn], Any]
    schedule: Any | None = None
    gradient_terms: Callable[[int, LogFn], None] | None = None
    after_step: Callable[[], None] | None = None


def task_phases(task: Any) -> list[Phase]:
    """``task.phases()`` when the task has several optimizers, else its one phase from ``training_loss``,
    ``gradient_terms`` and ``optimizer_and_schedule`` (called once: it builds the optimizer)."""
    phases = getattr(task, "phases", None)
    if phases is not None:
        return list(phases())
    optimizer, schedule = task.optimizer_and_schedule()
    return [Phase("", optimizer, task.training_loss, schedule, task.gradient_terms)]
