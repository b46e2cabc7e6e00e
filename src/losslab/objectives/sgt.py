"""Softmax gradient tampering (Das et al., arXiv:2111.12495; objectives spec §4) as a ``torch.autograd.Function``.

    >>> loss = sgt_cross_entropy(logits, target, alpha=0.25)     # value: plain CE, to log and validate with
    >>> loss.backward()                                           # gradient: softmax(α·z) − q per row

Forward returns CE(z, q) = −Σ_j q_j log softmax(z)_j on the *unmodified* logits, q = (1−s)·e_y + s/C (or a soft
target). Backward replaces p − q by softmax(α·z) − q = p^α/Σ_j p_j^α − q, times the incoming gradient (so ``mean``
divides by the number of valid rows and a GradScaler scale S gives exactly S× the gradient). Equivalently the
gradient is (1/α)·∇_z CE(α·z, q). α = 1 is plain cross entropy.

Unlike the original tensor hook, which rebuilt p from the incoming gradient and was right only when the AMP scale
equalled N², this is independent of batch size, loss scale, reduction, accumulation and other losses on the logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from losslab.errors import check_range
from losslab.objectives.logit_rows import (
    LogitRows,
    RowLoss,
    check_label_smoothing,
    row_loss,
    smoothed_cross_entropy,
    subtract_smoothed_target_,
)
from losslab.objectives.registry import OBJECTIVES


def check_sgt_alpha(alpha: float) -> None:
    """Raise :class:`ConfigError` unless 0 < α ≤ 1."""
    check_range("alpha", alpha, low=0.0, high=1.0, low_inclusive=False)


class SoftmaxGradientTampering(torch.autograd.Function):
    """Per-row CE value forward; softmax(α·z) − q backward. Inputs are the [N, C] rows of a :class:`LogitRows`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx: Any, logits: Tensor, rows: LogitRows, label_smoothing: float, alpha: float) -> Tensor:
        """[N] per-row CE of ``logits`` (= ``rows.logits``, float32 or wider) against the smoothed target."""
        ctx.save_for_backward(logits)
        ctx.rows, ctx.label_smoothing, ctx.alpha = rows, label_smoothing, alpha
        return smoothed_cross_entropy(torch.log_softmax(logits, dim=-1), rows, label_smoothing)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor, None, None, None]:
        """(softmax(α·z) − q) · grad_rows[:, None], in the logits' dtype."""
        (logits,) = ctx.saved_tensors
        grad = torch.softmax(logits * ctx.alpha, dim=-1)
        subtract_smoothed_target_(grad, ctx.rows, ctx.label_smoothing)
        grad.mul_(grad_rows.to(grad.dtype)[:, None])
        return grad.to(logits.dtype), None, None, None


def sgt_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Cross entropy whose logit gradient is softmax(α·z) − q (softmax gradient tampering), α ∈ (0, 1].

    ``logits`` [..., C]; ``target`` [...] class ids or [..., C] probabilities (soft or mixup targets). The value
    equals :func:`~losslab.objectives.cross_entropy` exactly. Defaults α = 0.25 (ResNet-18), s = 0.
    """
    check_sgt_alpha(alpha)
    check_label_smoothing(label_smoothing)

    def per_row(rows: LogitRows) -> Tensor:
        return SoftmaxGradientTampering.apply(rows.logits, rows, label_smoothing, alpha)

    return row_loss(logits, target, per_row, reduction=reduction, ignore_index=ignore_index)


@OBJECTIVES.register("sgt", "softmax_gradient_tampering")
class SGTCrossEntropyLoss(RowLoss):
    """Module form of :func:`sgt_cross_entropy` (``--modify-softmax α`` in the SGT code)."""

    hyperparameters: ClassVar[dict[str, str]] = {"sgt_alpha": "alpha", "label_smoothing": "label_smoothing"}

    def __init__(
        self,
        *,
        alpha: float = 0.25,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        check_sgt_alpha(alpha)
        check_label_smoothing(label_smoothing)
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sgt_cross_entropy(
            logits,
            target,
            alpha=self.alpha,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, label_smoothing={self.label_smoothing}, {super().extra_repr()}"
