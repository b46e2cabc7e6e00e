"""The classifier's training and evaluation math, shared by both training engines (no Lightning here).

Per training step (batch ``x, y`` of size B)::

    logits = model(x);  L = objective(logits, y)              # task loss, batch mean
    R_j = reg_j.loss_term(model, L, B)   for active regs       # loss-side terms, already × λ_j
    backward(L + Σ_j R_j)                                       # LPGrad's fused term carries ∂L/∂θ itself:
                                                                # then backward(L.detach() + Σ_j R_j)
    reg_j.grad_term(model)               for active regs       # gradient-side terms (Frobenius decay) after the
                                                                # AMP unscale, before clipping and optimizer.step

The engine owns the loop (``losslab.train.engine_plain`` or the Lightning module in ``losslab.train.classifier``);
:class:`ClassifierTask` owns what a step computes and what it logs, through a ``log(name, value, prog_bar)``
callable the engine averages over the epoch. The task loss and every regularizer term are logged separately
(``train/loss``, ``reg/<name>``); evaluation reduces to one tally of sums (:data:`EVAL_TALLY`), so a metric over
several shards or ranks is the sum of their tallies, never a mean of means.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import TrainingDivergedError
from losslab.runs.task import LogFn
from losslab.train.config import TrainConfig

DIVERGED_HINT = (
    "the run stopped and its last good checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. "
    "Lower --lr, add --gradient-clip (e.g. 1.0), lower --lmbda, or use --precision 32"
)

#: The sums an evaluation pass accumulates: top-1 hits, top-5 hits, summed cross entropy, sample count.
EVAL_TALLY = ("correct1", "correct5", "ce_sum", "n")


class ClassifierTask:
    """Train ``model`` with ``objective`` under an optional regularization ``schedule``.

    Args:
        config: the run's :class:`TrainConfig`.
        model: the network (logits ``[N, C]``).
        objective: a loss module ``(logits, target) -> scalar`` (per-sample with mixup).
        schedule: an object with ``active(epoch) -> list`` and ``regularizers()`` (``losslab.regularizers.Schedule``),
            or ``None``.
        always_on: regularizers active in every epoch (e.g. Frobenius decay that replaces weight decay).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        objective: nn.Module,
        schedule: Any | None = None,
        always_on: list[Any] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.objective = objective
        self.schedule = schedule
        self.always_on = list(always_on or [])
        self.mixup: Any | None = None  # timm Mixup (losslab.train.recipe), set by fit() when cfg asks for it
        self.channels_last = False  # inputs (and the model) in channels-last memory format
        self._nonfinite: Tensor | None = None  # bool: a non-finite loss since the last check (no sync per step)
        self.forward_model: nn.Module | None = None  # the training forward's module when it wraps model (DDP)

    # ------------------------------------------------------------------ regularizers
    def all_regularizers(self) -> list[Any]:
        """Every regularizer that is active in some epoch, each once."""
        return [*self.always_on, *(self.schedule.regularizers() if self.schedule is not None else [])]

    def active_regularizers(self, epoch: int) -> list[Any]:
        """The regularizers of ``epoch``."""
        scheduled = self.schedule.active(epoch) if self.schedule is not None else []
        return self.always_on + list(scheduled)

    def attach(self) -> None:
        for reg in self.all_regularizers():
            reg.attach(self.model)

    def detach(self) -> None:
        for reg in self.all_regularizers():
            reg.detach()

    def start_epoch(self, epoch: int) -> None:
        """Switch the regularizers' hooks on or off for ``epoch``."""
        active = self.active_regularizers(epoch)
        for reg in self.all_regularizers():
            set_active = getattr(reg, "set_active", None)
            if set_active is not None:
                set_active(any(reg is a for a in active))

    # ------------------------------------------------------------------ the task protocol (losslab.runs.task)
    def modules(self) -> dict[str, nn.Module]:
        """The network and the loss module (a learnable loss has parameters): what a checkpoint holds."""
        return {"model": self.model, "objective": self.objective}

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[1].shape[0])

    def tally_metrics(self, stage: str, tally: Tensor | list[float]) -> dict[str, float]:
        return tally_metrics(stage, tally)

    # ------------------------------------------------------------------ steps
    def prepare(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch as the model takes it (channels-last when the model is)."""
        if self.channels_last:
            x, y = batch
            return x.contiguous(memory_format=torch.channels_last), y
        return batch

    def training_loss(self, batch: tuple[Tensor, Tensor], epoch: int, log: LogFn) -> Tensor:
        """The scalar to backpropagate for ``batch`` in ``epoch`` (task loss plus active loss-side terms)."""
        x, y = batch
        if self.mixup is not None:
            from losslab.train.recipe import mix_batch, mixed_loss

            x, y, y2, lam = mix_batch(self.mixup, x, y)
            logits = self._train_forward(x)  # (B, C)
            loss = mixed_loss(self.objective, logits, y, y2, lam)
        else:
            logits = self._train_forward(x)  # (B, C)
            loss = self.objective(logits, y)
        terms = []
        task_in_terms = False  # a fused term already carries ∂loss/∂θ: backpropagate loss.detach() then
        for reg in self.active_regularizers(epoch):
            term = None if task_in_terms else reg.fused_loss_term(self.model, loss, x.shape[0])
            task_in_terms = task_in_terms or term is not None
            if term is None:
                term = reg.loss_term(self.model, loss, x.shape[0])
            if term is not None:
                log(f"reg/{reg.name}", term.detach())
                terms.append(term)
        total = sum(terms, loss.detach() if task_in_terms else loss)
        bad = ~torch.isfinite(total.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        log("train/loss", loss.detach(), prog_bar=True)
        log("train/acc", accuracy(logits.detach(), y))
        if self.config.logit_stats:
            self.log_logit_stats("train", logits.detach(), log)
        return total

    def distribute(self, wrap: Any) -> list[nn.Module]:
        """Under torchrun: the training forward goes through ``wrap(model)`` (DistributedDataParallel); the
        objective's own parameters are averaged by the loop. Returns the wrapped modules."""
        self.forward_model = wrap(self.model)
        return [self.model]

    def _train_forward(self, x: Tensor) -> Tensor:
        """The training forward: through ``forward_model`` (DistributedDataParallel's gradient sync) when set."""
        return (self.forward_model if self.forward_model is not None else self.model)(x)

    def gradient_terms(self, epoch: int, log: LogFn) -> None:
        """Apply the active gradient-side terms (after the AMP unscale, before clipping and the optimizer step)."""
        for reg in self.active_regularizers(epoch):
            value = reg.grad_term(self.model)
            if value is not None:
                log(f"reg/{reg.name}", value)

    def take_nonfinite(self) -> Tensor | None:
        """Whether a training loss since the last call was NaN/inf (a bool tensor, or None before any step)."""
        bad, self._nonfinite = self._nonfinite, None
        return bad

    def eval_tally(self, batch: tuple[Tensor, Tensor], stage: str, log: LogFn) -> Tensor:
        """The (4,) float64 sums of :data:`EVAL_TALLY` for one evaluation batch (model in eval mode, no grad)."""
        x, y = batch
        logits = self.model(x).float()  # (B, C)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, k)
        hits = top == y.unsqueeze(-1)
        if self.config.logit_stats:
            self.log_logit_stats(stage, logits, log)
        return torch.stack(
            [
                hits[:, 0].sum().to(torch.float64),
                hits.any(dim=-1).sum().to(torch.float64),
                F.cross_entropy(logits, y, reduction="sum").to(torch.float64),
                torch.full((), y.numel(), dtype=torch.float64, device=y.device),
            ]
        )

    def log_logit_stats(self, stage: str, logits: Tensor, log: LogFn) -> None:
        from losslab.objectives import logit_statistics

        for key, value in logit_statistics(logits).items():
            log(f"{stage}_logits/{key}", float(value))

    def validation_statistics(self, lr: float) -> dict[str, float]:
        """What every validation logs besides accuracy: weight-shape, factor (§8) and attention statistics."""
        from losslab.layers.attention import attention_statistics

        out = dict(weight_statistics(self.model, per_layer=bool(self.all_regularizers())))
        out.update({f"factors/{k}": v for k, v in factor_statistics(self.model, lr).items()})
        out.update({f"attention/{k}": v for k, v in attention_statistics(self.model).items()})
        return out

    # ------------------------------------------------------------------ optimisation
    def optimizer_and_schedule(self) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer (regularizer-exempt parameters without weight decay) and its per-epoch schedule."""
        from losslab.train.optim import build_optimizer, build_scheduler

        no_decay: list[nn.Parameter] = []
        for reg in self.all_regularizers():
            no_decay.extend(reg.no_weight_decay_params(self.model))
        optimizer = build_optimizer(self.config, self.model, no_decay)
        scheduler, _ = build_scheduler(self.config, optimizer)
        return optimizer, scheduler


def tally_metrics(stage: str, tally: Tensor | list[float]) -> dict[str, float]:
    """``stage/ce``, ``stage/acc`` (and for test ``test/top5``, ``test/n``) from summed :data:`EVAL_TALLY`."""
    correct1, correct5, ce_sum, n = tally.tolist() if isinstance(tally, Tensor) else tally
    if n == 0:
        return {}
    out = {f"{stage}/ce": ce_sum / n, f"{stage}/acc": 100.0 * correct1 / n}
    if stage == "test":
        out.update({"test/top5": 100.0 * correct5 / n, "test/n": n})
    return out


def diverged_error(epoch: int) -> TrainingDivergedError:
    message = f"training diverged: the loss became NaN or infinite in epoch {epoch}; {DIVERGED_HINT}"
    return TrainingDivergedError(message)


def accuracy(logits: Tensor, target: Tensor, topk: int = 1) -> Tensor:
    """Fraction of rows whose target is among the ``topk`` largest logits (in percent)."""
    k = min(topk, logits.shape[-1])
    hits = (logits.topk(k, dim=-1).indices == target.unsqueeze(-1)).any(dim=-1)
    return hits.float().mean() * 100.0


def weight_statistics(model: nn.Module, per_layer: bool = False) -> dict[str, float]:
    """Layer means of the weights' kurtosis and max|w|/std(w) (per layer too if asked): the *shape* of the weight
    distributions, which the spread penalties do not control and quantizers care about."""
    from losslab.regularizers import weight_shape_stats

    stats = weight_shape_stats(model)
    out: dict[str, float] = {}
    for kind in ("kurtosis", "max_over_std"):
        values = [v for k, v in stats.items() if k.startswith(f"{kind}/")]
        if values:
            out[f"weights/{kind}_mean"] = sum(values) / len(values)
    if per_layer:
        out.update({f"weights/{k}": v for k, v in stats.items()})
    return out


def factor_statistics(model: nn.Module, lr: float) -> dict[str, float]:
    """The normalization experiment's per-epoch factor logs (factorized.md §8), empty for a dense model."""
    from losslab.layers import LowRankBase, factor_stats

    return factor_stats(model, lr=lr) if any(isinstance(m, LowRankBase) for m in model.modules()) else {}
