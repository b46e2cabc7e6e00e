"""Cross entropy with label smoothing (objectives spec §1), for integer or soft targets.

    >>> loss = cross_entropy(logits, target, label_smoothing=0.1)        # functional
    >>> loss = create("ce", label_smoothing=0.1)(logits, target)         # module

Target distribution q = (1−s)·e_y + s/C (the uniform mass goes to all C classes, including y, as in PyTorch and
timm); loss −Σ_j q_j log p_j; gradient p − q. Soft targets t ([..., C] probabilities) use q = (1−s)·t + s/C.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from losslab.objectives.logit_rows import (
    LogitRows,
    RowLoss,
    check_label_smoothing,
    row_loss,
    smoothed_cross_entropy,
)
from losslab.objectives.registry import OBJECTIVES


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Label-smoothed cross entropy −Σ_j q_j log softmax(z)_j, q = (1−s)·e_y + s/C.

    ``logits`` [..., C]; ``target`` [...] class ids (``ignore_index`` rows skipped) or [..., C] probabilities.
    Returns a scalar (``mean``/``sum``) or [...] (``none``) in float32 (float64 for float64 logits), in nats.
    """
    check_label_smoothing(label_smoothing)

    def per_row(rows: LogitRows) -> Tensor:
        return smoothed_cross_entropy(rows.log_probs(), rows, label_smoothing)

    return row_loss(logits, target, per_row, reduction=reduction, ignore_index=ignore_index)


@OBJECTIVES.register("ce", "cross_entropy")
class CrossEntropyLoss(RowLoss):
    """Module form of :func:`cross_entropy`: ``CrossEntropyLoss(label_smoothing=0.1)(logits, target)``."""

    hyperparameters: ClassVar[dict[str, str]] = {"label_smoothing": "label_smoothing"}

    def __init__(self, *, label_smoothing: float = 0.0, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            logits,
            target,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, {super().extra_repr()}"
