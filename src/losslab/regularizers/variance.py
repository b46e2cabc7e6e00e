"""The VarianceNorm family (RegulQuant): penalties on the spread of each weight tensor, plus shape statistics.

With Var_l the biased variance (1/N_l)·Σ(w − μ_l)² of weight tensor l and L covered tensors, the ``"legacy"``
reduction (default) reproduces RegulQuant exactly::

    variance          λ·Σ_l Var_l                      (VarianceNorm)
    std               λ·sqrt(Σ_l Var_l)                (StdDevNorm; not Σ_l std_l)
    inverse_variance  λ·(1/L)·Σ_l 1/Var_l              (InverseVarianceNorm)
    inverse_std       λ·sqrt((1/L)·Σ_l 1/Var_l)        (InverseStdDevNorm)

``reduction="sum"`` or ``"mean"`` applies one rule (Σ_l or (1/L)·Σ_l) to all four. Inverse forms clamp
Var_l >= 1e-12; the square roots clamp their argument at the same floor so gradients stay finite.

Example::

    reg = create("variance", lam=1.25)
    (loss + reg.loss_term(model, loss, batch_size)).backward()
    stats = weight_shape_stats(model)   # {"kurtosis/features.0": 3.1, "max_over_std/features.0": 4.2, ...}
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.regularizers.base import (
    REGULARIZERS,
    ModuleSelector,
    Regularizer,
    at_least_fp32,
    check_lambda,
    named_weight_tensors,
    weight_tensors,
)

VAR_FLOOR = 1e-12
REDUCTIONS = ("legacy", "sum", "mean")


class WeightSpread(Regularizer):
    """λ·root(reduce_l(stat(Var_l))) with stat = Var or 1/Var and root = identity or sqrt (class attributes).

    Args:
        lam: strength λ >= 0 (alias ``lmbda``).
        reduction: ``"legacy"`` (sum for variance/std, mean for the inverse forms), ``"sum"`` or ``"mean"``.
        selector: which modules' ``.weight`` are covered (default: Conv2d and Linear).
    """

    inverse: bool = False
    root: bool = False

    def __init__(
        self,
        *,
        lam: float | None = None,
        lmbda: float | None = None,
        reduction: str = "legacy",
        selector: ModuleSelector | None = None,
    ) -> None:
        super().__init__()
        if (lam is None) == (lmbda is None):
            raise ConfigError(
                f"{self.name} needs exactly one of lam or its alias lmbda (got lam={lam!r}, lmbda={lmbda!r})"
            )
        self.lam = check_lambda("lam", lam if lam is not None else lmbda)  # type: ignore[arg-type]
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction={reduction!r} is not allowed; choose one of: {', '.join(REDUCTIONS)}")
        self.reduction = reduction
        self.selector = selector

    def penalty(self, weights: list[Tensor]) -> Tensor:
        """The unweighted penalty (without λ) of ``weights``, in at least fp32, differentiable."""
        var = torch.stack([torch.var(at_least_fp32(w), correction=0) for w in weights])
        stat = 1.0 / var.clamp_min(VAR_FLOOR) if self.inverse else var
        use_mean = self.reduction == "mean" or (self.reduction == "legacy" and self.inverse)
        total = stat.mean() if use_mean else stat.sum()
        return total.clamp_min(VAR_FLOOR).sqrt() if self.root else total

    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """λ times :meth:`penalty` of the model's selected weights (``None`` if there are none)."""
        weights = weight_tensors(model, self.selector)
        if not weights:
            return None
        return self.lam * self.penalty(weights)


@REGULARIZERS.register("variance", "variancenorm", "variance_norm")
class VarianceNorm(WeightSpread):
    """λ·Σ_l Var_l (legacy reduction)."""

    name = "variance"


@REGULARIZERS.register("std", "stddevnorm", "std_dev_norm")
class StdDevNorm(WeightSpread):
    """λ·sqrt(Σ_l Var_l) (legacy reduction)."""

    name = "std"
    root = True


@REGULARIZERS.register("inverse_variance", "inversevariancenorm", "inverse_variance_norm")
class InverseVarianceNorm(WeightSpread):
    """λ·(1/L)·Σ_l 1/Var_l (legacy reduction)."""

    name = "inverse_variance"
    inverse = True


@REGULARIZERS.register("inverse_std", "inversestddevnorm", "inverse_std_dev_norm")
class InverseStdDevNorm(WeightSpread):
    """λ·sqrt((1/L)·Σ_l 1/Var_l) (legacy reduction)."""

    name = "inverse_std"
    inverse = True
    root = True


@torch.no_grad()
def weight_shape_stats(model: nn.Module, selector: ModuleSelector | None = None) -> dict[str, float]:
    """Per-tensor shape statistics for logging, keyed ``"kurtosis/<module>"`` and ``"max_over_std/<module>"``.

    kurtosis = E[(w − μ)⁴] / Var² (Pearson, 3 for a Gaussian, 1.8 for a uniform); max_over_std = max|w| / std(w)
    with the biased std. Both are scale-free: they describe the shape the spread penalties do not control.
    Computed in float64 over the selected weights (default: Conv2d and Linear).
    """
    stats: dict[str, float] = {}
    for name, weight in named_weight_tensors(model, selector):
        w = weight.detach().double().flatten()
        centred = w - w.mean()
        var = centred.square().mean().clamp_min(VAR_FLOOR)
        stats[f"kurtosis/{name}"] = float(centred.pow(4).mean() / var.square())
        stats[f"max_over_std/{name}"] = float(w.abs().max() / var.sqrt())
    return stats
