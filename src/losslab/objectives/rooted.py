"""Rooted losses (Wang et al., AISTATS 2025; objectives spec §3): the trained form and the convex theory form.

    >>> rooted_loss(logits, target, k=3.0, m=3.0)               # 'root': reproduces the RLO experiments
    >>> rooted_loss_convex(logits, target, k=3.0)               # 'root_convex': k·exp(CE/k), convex
    >>> rooted_logistic(margin, k=2.0)                          # binary margin form, used by the GAN losses

The two multi-class forms share only their k → ∞ limit (cross entropy):

* ``rooted_loss`` m·(1 − p_y^{1/k}) ∈ [0, m), gradient (m/k)·p_y^{1/k}·(p − e_y): hard rows are *down*-weighted.
  It equals (m/k)·GCE with q = 1/k (Zhang & Sabuncu 2018), tends to CE from below. Under Adam m is nearly a no-op.
* ``rooted_loss_convex`` k·exp(CE/k), gradient p_y^{−1/k}·(p − e_y): hard rows are *up*-weighted; with
  ``subtract_k`` it is k(e^{CE/k} − 1) ≥ CE, tending to CE from above.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from losslab.errors import check_range
from losslab.objectives.logit_rows import LogitRows, RowLoss, compute_dtype, row_loss
from losslab.objectives.registry import OBJECTIVES

_MAX_FP32_LOG = 88.0  # exp(88) is below the float32 maximum (exp(88.72))


def check_k(k: float) -> None:
    """Raise :class:`ConfigError` unless the root k > 0."""
    check_range("k", k, low=0.0, low_inclusive=False)


def check_rooted_params(k: float, m: float) -> None:
    """Raise :class:`ConfigError` unless k > 0 and m > 0 (floats; the original CLI typed them as int)."""
    check_k(k)
    check_range("m", m, low=0.0, low_inclusive=False)


def check_max_log_weight(max_log_weight: float | None) -> None:
    """Raise :class:`ConfigError` unless ``max_log_weight`` is None or in (0, 88] (float32 exp range)."""
    if max_log_weight is not None:
        check_range("max_log_weight", max_log_weight, low=0.0, high=_MAX_FP32_LOG, low_inclusive=False)


def rooted_loss(
    logits: Tensor,
    target: Tensor,
    *,
    k: float = 3.0,
    m: float = 3.0,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """RLO training loss m·(1 − p_y^{1/k}), computed as −m·expm1(log_softmax(z)_y / k) (never pow on p).

    ``logits`` [..., C], ``target`` [...] class ids. Defaults k = m = 3 (vision); the RLO LLM runs use k = m = 5.
    Extreme logits are safe: p_y^{1/k} underflows to 0 with a 0 gradient.
    """
    check_rooted_params(k, m)

    def per_row(rows: LogitRows) -> Tensor:
        return -m * torch.expm1(rows.target_log_prob(rows.log_probs()) / k)

    return row_loss(logits, target, per_row, reduction=reduction, ignore_index=ignore_index)


def _exp_with_linear_tail(u: Tensor, k: float, max_log_weight: float | None) -> Tensor:
    """k(e^u − 1), continued linearly (C¹) as k·e^c·(u − c) + k(e^c − 1) for u > c = ``max_log_weight``."""
    if max_log_weight is None:
        return k * torch.expm1(u)
    c = max_log_weight
    return k * torch.expm1(u.clamp_max(c)) + k * math.exp(c) * (u - c).clamp_min(0.0)


def rooted_loss_convex(
    logits: Tensor,
    target: Tensor,
    *,
    k: float = 3.0,
    subtract_k: bool = False,
    max_log_weight: float | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Convex rooted loss k·exp(CE/k) = k·p_y^{−1/k}; ``subtract_k`` gives k(e^{CE/k} − 1).

    Overflows float32 once CE/k > 88.7. ``max_log_weight=c`` switches to the linear continuation
    k·e^c·(1 + CE/k − c) beyond CE/k = c (C¹, gradient e^c·(p − e_y) there), unlike a clamp which zeroes it.
    """
    check_k(k)
    check_max_log_weight(max_log_weight)

    def per_row(rows: LogitRows) -> Tensor:
        u = -rows.target_log_prob(rows.log_probs()) / k
        value = _exp_with_linear_tail(u, k, max_log_weight)
        return value if subtract_k else value + k

    return row_loss(logits, target, per_row, reduction=reduction, ignore_index=ignore_index)


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) as ``logaddexp(x, 0)``: exact for all x (``F.softplus`` switches to x above 20, off by e^{−20})."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def rooted_logistic(t: Tensor, k: float, subtract_k: bool = False) -> Tensor:
    """Binary rooted logistic loss ℓ_k(t) = k(1 + e^{−t})^{1/k} = k·σ(t)^{−1/k} of a margin t = y·f(x).

    Evaluated as k·exp(softplus(−t)/k) in float32 or wider with autocast off, elementwise, same shape as ``t``.
    ℓ' = −σ(−t)(1 + e^{−t})^{1/k} and ℓ'' > 0 for every k > 0 (convex). ``subtract_k`` returns ℓ_k − k, which
    tends to the logistic loss softplus(−t) from above as k → ∞.
    """
    check_k(k)
    with torch.autocast(device_type=t.device.type, enabled=False):
        value = k * torch.expm1(softplus(-t.to(compute_dtype(t.dtype))) / k)
        return value if subtract_k else value + k


@OBJECTIVES.register("root", "rooted", "rlo")
class RootedLoss(RowLoss):
    """Module form of :func:`rooted_loss` (``--loss root --k 3 --m 3`` in the RLO code)."""

    hyperparameters: ClassVar[dict[str, str]] = {"k": "k", "m": "m"}

    def __init__(self, *, k: float = 3.0, m: float = 3.0, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        check_rooted_params(k, m)
        self.k = float(k)
        self.m = float(m)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return rooted_loss(logits, target, k=self.k, m=self.m, reduction=self.reduction, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"k={self.k}, m={self.m}, {super().extra_repr()}"


@OBJECTIVES.register("root_convex", "rooted_convex")
class RootedLossConvex(RowLoss):
    """Module form of :func:`rooted_loss_convex`."""

    hyperparameters: ClassVar[dict[str, str]] = {"k": "k"}

    def __init__(
        self,
        *,
        k: float = 3.0,
        subtract_k: bool = False,
        max_log_weight: float | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        check_k(k)
        check_max_log_weight(max_log_weight)
        self.k = float(k)
        self.subtract_k = subtract_k
        self.max_log_weight = max_log_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return rooted_loss_convex(
            logits,
            target,
            k=self.k,
            subtract_k=self.subtract_k,
            max_log_weight=self.max_log_weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, subtract_k={self.subtract_k}, max_log_weight={self.max_log_weight}, {super().extra_repr()}"
