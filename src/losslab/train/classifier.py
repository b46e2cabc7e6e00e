"""The LightningModule that trains an image classifier with a losslab objective and regularizers.

Per training step (batch ``x, y`` of size B)::

    logits = model(x);  L = objective(logits, y)              # task loss, batch mean
    R_j = reg_j.loss_term(model, L, B)   for active regs       # loss-side terms, already × λ_j
    backward(L + Σ_j R_j)                                       # LPGrad's fused term carries ∂L/∂θ itself:
                                                                # then backward(L.detach() + Σ_j R_j)
    reg_j.grad_term(model)               for active regs       # gradient-side terms (Frobenius decay) after the
                                                                # AMP unscale, before clipping and optimizer.step

The task loss and every regularizer term are logged separately (``train/loss``, ``reg/<name>``, e.g.
``reg/frobenius_decay`` and ``reg/attention_frobenius_decay``); RegulQuant logged their sum, which made runs with
different regularizers incomparable. At each validation (the end-of-epoch weights) factorized layers log the §8
factor statistics (``factors/...``) and models with fused-QKV attention the per-head product norms
(``attention/qk_frob_norm``, ``attention/ov_nuclear_norm``, ...; see ``losslab.layers.attention``).
Validation and test report plain cross entropy (``val/ce``) and top-1 accuracy whatever the training objective, so
checkpoints are selected on the same metric for every loss. They are exact over the whole split also under DDP:
each rank sums correct predictions, cross entropy and counts over its (unpadded) shard, and the sums are
all-reduced once at the end of the pass (sum of correct / sum of counts). A non-finite training loss is
recorded without a device sync per step and checked at the end of the epoch, before any checkpoint of that epoch
is written: the run stops with :class:`TrainingDivergedError`, the last good checkpoint stays. With ``logit_stats``
the module logs SGT's logit statistics (norm, |mean|, |max|, var) as per-batch averages over each epoch.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import LosslabError
from losslab.objectives import logit_statistics
from losslab.train.config import TrainConfig
from losslab.train.optim import build_optimizer, build_scheduler


class TrainingDivergedError(LosslabError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


EVAL_TALLY = ("correct1", "correct5", "ce_sum", "n")


class ClassifierModule(pl.LightningModule):
    """Train ``model`` with ``objective`` under an optional regularization ``schedule``.

    Args:
        config: the run's :class:`TrainConfig` (saved in every checkpoint as ``hyper_parameters["config"]``).
        model: the network (logits ``[N, C]``).
        objective: a loss module ``(logits, target) -> scalar``.
        schedule: an object with ``active(epoch) -> list`` of regularizers (``losslab.regularizers.Schedule``),
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
        super().__init__()
        self.config = config
        self.model = model
        self.objective = objective
        self.schedule = schedule
        self.always_on = list(always_on or [])
        self.mixup: Any | None = None  # timm Mixup (losslab.train.recipe), set by fit() when cfg asks for it
        self.save_hyperparameters({"config": config.to_dict()})
        self._tally: torch.Tensor | None = None  # (4,) sums of EVAL_TALLY over this rank's evaluation batches
        self._nonfinite: torch.Tensor | None = None  # bool: a non-finite loss in this epoch (no sync per step)
        self.channels_last = False  # set by fit: inputs (and the model) in channels-last memory format

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last:
            x, y = batch
            return x.contiguous(memory_format=torch.channels_last), y
        return batch

    # ------------------------------------------------------------------ regularizers
    def all_regularizers(self) -> list[Any]:
        """Every regularizer that is active in some epoch, each once."""
        return [*self.always_on, *(self.schedule.regularizers() if self.schedule is not None else [])]

    def active_regularizers(self) -> list[Any]:
        """The regularizers of the current epoch."""
        scheduled = self.schedule.active(self.current_epoch) if self.schedule is not None else []
        return self.always_on + list(scheduled)

    def on_fit_start(self) -> None:
        for reg in self.all_regularizers():
            reg.attach(self.model)

    def on_fit_end(self) -> None:
        for reg in self.all_regularizers():
            reg.detach()

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)
        active = self.active_regularizers()
        for reg in self.all_regularizers():
            set_active = getattr(reg, "set_active", None)
            if set_active is not None:
                set_active(any(reg is a for a in active))

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            from losslab.train.recipe import mix_batch, mixed_loss

            x, y, y2, lam = mix_batch(self.mixup, x, y)
            logits = self.model(x)
            loss = mixed_loss(self.objective, logits, y, y2, lam)
        else:
            logits = self.model(x)
            loss = self.objective(logits, y)
        terms = []
        task_in_terms = False  # a fused term already carries ∂loss/∂θ: backpropagate loss.detach() then
        for reg in self.active_regularizers():
            term = None if task_in_terms else reg.fused_loss_term(self.model, loss, x.shape[0])
            task_in_terms = task_in_terms or term is not None
            if term is None:
                term = reg.loss_term(self.model, loss, x.shape[0])
            if term is not None:
                self.log(f"reg/{reg.name}", term.detach(), on_step=False, on_epoch=True)
                terms.append(term)
        total = sum(terms, loss.detach() if task_in_terms else loss)
        bad = ~torch.isfinite(total.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", accuracy(logits.detach(), y), on_step=False, on_epoch=True)
        if self.config.logit_stats:
            self._log_logit_stats("train", logits.detach())
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for reg in self.active_regularizers():
            value = reg.grad_term(self.model)
            if value is not None:
                self.log(f"reg/{reg.name}", value, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        # Runs before ModelCheckpoint's hook of this epoch: a diverged epoch never overwrites last.ckpt.
        bad, self._nonfinite = self._nonfinite, None
        if bad is not None and bool(self.trainer.strategy.reduce(bad.float(), reduce_op="sum") > 0):
            raise TrainingDivergedError(
                f"training diverged: the loss became NaN or infinite in epoch {self.current_epoch}; the run stopped "
                "and its last good checkpoint (checkpoints/last.ckpt, from the epoch before, if any) is kept. "
                "Lower --lr, add --gradient-clip (e.g. 1.0), lower --lmbda, or use --precision 32"
            )

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits = self.model(x).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, k)
        hits = top == y.unsqueeze(-1)
        step = torch.stack(
            [
                hits[:, 0].sum().to(torch.float64),
                hits.any(dim=-1).sum().to(torch.float64),
                F.cross_entropy(logits, y, reduction="sum").to(torch.float64),
                torch.full((), y.numel(), dtype=torch.float64, device=y.device),
            ]
        )
        self._tally = step if self._tally is None else self._tally + step
        if self.config.logit_stats:
            self._log_logit_stats(stage, logits)

    def _log_eval_tally(self, stage: str) -> None:
        """Log ``stage/acc``, ``stage/ce`` (and ``test/top5``) from the sums over every rank's shard."""
        tally, self._tally = self._tally, None
        if tally is None:
            tally = torch.zeros(len(EVAL_TALLY), dtype=torch.float64, device=self.device)
        correct1, correct5, ce_sum, n = self.trainer.strategy.reduce(tally, reduce_op="sum").tolist()
        if n == 0:
            return
        self.log(f"{stage}/ce", ce_sum / n, prog_bar=stage == "val", sync_dist=False)
        self.log(f"{stage}/acc", 100.0 * correct1 / n, prog_bar=stage == "val", sync_dist=False)
        if stage == "test":
            self.log("test/top5", 100.0 * correct5 / n, sync_dist=False)
            self.log("test/n", n, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._tally = None

    def on_test_epoch_start(self) -> None:
        self._tally = None

    def on_test_epoch_end(self) -> None:
        self._log_eval_tally("test")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        from losslab.layers.attention import attention_statistics

        if self.trainer.sanity_checking:
            return
        self._log_eval_tally("val")
        for key, value in weight_statistics(self.model, per_layer=bool(self.all_regularizers())).items():
            self.log(key, value)
        lowrank = factor_statistics(self.model, self.trainer.optimizers[0].param_groups[0]["lr"])
        for key, value in lowrank.items():
            self.log(f"factors/{key}", value)
        for key, value in attention_statistics(self.model).items():
            self.log(f"attention/{key}", value)

    def _log_logit_stats(self, stage: str, logits: torch.Tensor) -> None:
        for key, value in logit_statistics(logits).items():
            self.log(f"{stage}_logits/{key}", float(value), on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        no_decay: list[nn.Parameter] = []
        for reg in self.all_regularizers():
            no_decay.extend(reg.no_weight_decay_params(self.model))
        optimizer = build_optimizer(self.config, self.model, no_decay)
        scheduler, _ = build_scheduler(self.config, optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # timm schedulers take the epoch index; Lightning steps after epoch `current_epoch`, so set the next one.
        scheduler.step(epoch=self.current_epoch + 1)


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: int = 1) -> torch.Tensor:
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
