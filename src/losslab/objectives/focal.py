"""Focal loss, multi-class softmax form (Lin et al., ICCV 2017; objectives spec §2).

    >>> loss = focal_loss(logits, target, gamma=2.0, alpha=0.25)
    >>> loss = create("focal_rlo_paper")(logits, target)      # alpha 0.25, gamma 3, as the RLO script trains

FL = −α_y (1 − p_y)^γ log p_y, with log p_y from ``log_softmax`` and 1 − p_y = −expm1(log p_y). Gradient
α_y·[(1−p_y)^γ + γ p_y (1−p_y)^{γ−1}·CE]·(p − e_y). α is a scalar (a pure multiplier in this form) or a length-C
tensor indexed by y. γ must be 0 or ≥ 1: for 0 < γ < 1 the factor (1−p_y)^{γ−1} is infinite at p_y = 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, check_range
from losslab.objectives.logit_rows import LogitRows, RowLoss, row_loss
from losslab.objectives.registry import OBJECTIVES


def check_focal_params(gamma: float, alpha: float | Tensor) -> None:
    """Raise :class:`ConfigError` unless γ = 0 or γ ≥ 1, and α > 0 (scalar) or a 1-D tensor of values ≥ 0."""
    if not (gamma == 0 or gamma >= 1):
        raise ConfigError(
            f"gamma={gamma!r} is out of range: allowed gamma = 0 or gamma >= 1 "
            "((1-p)^(gamma-1) is infinite at p = 1 for 0 < gamma < 1)"
        )
    if isinstance(alpha, Tensor):
        if alpha.dim() != 1 or alpha.is_complex() or not alpha.is_floating_point() or bool((alpha < 0).any()):
            raise ConfigError(
                f"alpha tensor of shape {tuple(alpha.shape)} and dtype {alpha.dtype} is not allowed: "
                "pass a 1-D float tensor of C per-class weights >= 0, or a scalar > 0"
            )
    else:
        check_range("alpha", alpha, low=0.0, low_inclusive=False)


def _focal_loss(
    logits: Tensor, target: Tensor, gamma: float, alpha: float | Tensor, reduction: str, ignore_index: int
) -> Tensor:
    """:func:`focal_loss` without the hyperparameter checks (the module checks once, at construction)."""

    def per_row(rows: LogitRows) -> Tensor:
        log_p = rows.target_log_prob(rows.log_probs())
        loss = -log_p
        if gamma != 0:
            loss = loss * (-torch.expm1(log_p)).pow(gamma)
        if isinstance(alpha, Tensor):
            if alpha.shape[0] != rows.num_classes:
                raise LosslabError(
                    f"alpha has {alpha.shape[0]} per-class weights but the logits have C = {rows.num_classes} "
                    "classes; pass one weight per class"
                )
            return loss * alpha.to(loss).gather(0, rows.target)
        return loss * alpha

    return row_loss(logits, target, per_row, reduction=reduction, ignore_index=ignore_index)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Tensor = 0.25,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Focal loss −α_y (1 − p_y)^γ log p_y per row; ``logits`` [..., C], ``target`` [...] class ids.

    Defaults γ = 2, α = 0.25 (Lin et al.). γ = 0, α = 1 is cross entropy. Integer targets only.
    """
    check_focal_params(gamma, alpha)
    return _focal_loss(logits, target, gamma, alpha, reduction, ignore_index)


@OBJECTIVES.register("focal")
class FocalLoss(RowLoss):
    """Module form of :func:`focal_loss`; a tensor ``alpha`` is kept as a buffer (moves with ``.to``)."""

    hyperparameters: ClassVar[dict[str, str]] = {"focal_gamma": "gamma", "focal_alpha": "alpha"}

    alpha: Tensor | float

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | Tensor = 0.25,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        check_focal_params(gamma, alpha)
        self.gamma = gamma
        if isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha.detach().clone())
        else:
            self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return _focal_loss(logits, target, self.gamma, self.alpha, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        alpha = "per-class" if isinstance(self.alpha, Tensor) else self.alpha
        return f"gamma={self.gamma}, alpha={alpha}, {super().extra_repr()}"


@OBJECTIVES.register("focal_rlo_paper")
def focal_rlo_paper(
    *, gamma: float = 3.0, alpha: float | Tensor = 0.25, reduction: str = "mean", ignore_index: int = -100
) -> FocalLoss:
    """Preset: the focal loss the RLO training script hard-codes (α = 0.25, **γ = 3**)."""
    return FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction, ignore_index=ignore_index)
