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

Optional: ``task.micro_batches(batch)`` (gradient accumulation: ``training_loss`` and backward run on each part,
then one optimizer step; :class:`losslab.lm.finetune.CausalLMTask`), ``schedule.step_batch()`` (called after every
optimizer step: per-step schedules), ``task.distribute(wrap)`` (DDP under torchrun).
"""

from __future__ import annotations

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
