"""The loss along filter-normalized random directions (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018).

    line = loss_line(op, points=21, span=1.0, seed=0)         # L(θ + a·d), a ∈ [−span, span]
    grid = loss_plane(op, points=11, span=1.0, seed=0)        # L(θ + a·d₁ + b·d₂)

Each direction d is Gaussian, then rescaled filter by filter (each slice along a weight's first dimension, i.e.
each output channel or row) to the norm of the same filter of θ: d_f ← d_f·‖θ_f‖/‖d_f‖. Tensors of one dimension
(biases, normalization scales) get d = 0, as in the paper, so the picture is comparable across networks whose
weights differ in scale. The parameters are restored afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab.errors import check_range
from losslab.landscape.operator import HessianOperator

__all__ = ["filter_normalized_direction", "loss_line", "loss_plane"]


def filter_normalized_direction(op: HessianOperator, gen: torch.Generator) -> Tensor:
    """A flat random direction, filter-normalized to θ (module docstring)."""
    parts = []
    for p in op.params.values():
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype, device=p.device)
        if p.dim() <= 1:
            d.zero_()
        else:
            w = p.detach().reshape(p.shape[0], -1)
            d2 = d.reshape(p.shape[0], -1)
            d2.mul_(w.norm(dim=1, keepdim=True) / d2.norm(dim=1, keepdim=True).clamp_min(1e-30))
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def _losses(op: HessianOperator, points: list[Tensor]) -> list[float]:
    theta = op.theta()
    out = []
    try:
        for delta in points:
            op.set_theta(theta + delta)
            out.append(op.loss())
    finally:
        op.set_theta(theta)
    return out


def loss_line(op: HessianOperator, points: int = 21, span: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """``{"alpha": [...], "loss": [...]}``: L(θ + a·d) for ``points`` values of a in [−span, span]."""
    check_range("points", points, low=2)
    gen = torch.Generator(device=op.device).manual_seed(seed)
    d = filter_normalized_direction(op, gen)
    alphas = torch.linspace(-span, span, points, dtype=torch.float64)
    return {"alpha": alphas.tolist(), "loss": _losses(op, [float(a) * d for a in alphas])}


def loss_plane(op: HessianOperator, points: int = 11, span: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """``{"alpha", "beta", "loss"}``: L(θ + a·d₁ + b·d₂) on a ``points`` × ``points`` grid, loss[i][j] at
    (alpha_j, beta_i)."""
    check_range("points", points, low=2)
    gen = torch.Generator(device=op.device).manual_seed(seed + 1)
    d1, d2 = filter_normalized_direction(op, gen), filter_normalized_direction(op, gen)
    axis = torch.linspace(-span, span, points, dtype=torch.float64).tolist()
    flat = _losses(op, [a * d1 + b * d2 for b in axis for a in axis])
    return {"alpha": axis, "beta": axis, "loss": [flat[i * points : (i + 1) * points] for i in range(points)]}
