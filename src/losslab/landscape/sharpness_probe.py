"""Sharpness: how much the probe-set loss rises when the weights move by at most ρ.

    sharpness(op, rho=0.05, kind="average", adaptive=False, samples=10, seed=0)
    sharpness(op, rho=0.05, kind="worst", adaptive=True, steps=10)

With a perturbation δ = s ⊙ u, where s = 1 (plain) or s = |θ| (adaptive, Kwon et al. 2021; Andriushchenko et al.
2023) and ‖u‖₂ ≤ ρ:

- average-case: mean over ``samples`` Gaussian directions u = ρ·z/‖z‖ of L(θ + s⊙u) − L(θ);
- worst-case: max of L(θ + s⊙u) − L(θ) over the ball, by projected normalized gradient ascent on u
  (u ← Π(u + (ρ/2)·g/‖g‖), g = s ⊙ ∇L(θ + s⊙u)), started from the best Gaussian sample and keeping the best point
  seen, so it is never below the average-case value for the same ρ and seed.

Adaptive sharpness is unchanged by the rescalings a network's function ignores (a ReLU layer's weights ×c and the
next layer's ÷c, or a weight before BatchNorm ×c): the loss as a function of u is the same. The parameters are
restored afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab.errors import check_range
from losslab.landscape.operator import HessianOperator

__all__ = ["sharpness"]


def sharpness(
    op: HessianOperator,
    rho: float = 0.05,
    kind: str = "average",
    adaptive: bool = False,
    samples: int = 10,
    steps: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"value", "rho", "kind", "adaptive", "base_loss"}`` with value the loss increase (module docstring)."""
    check_range("rho", rho, low=0.0)
    check_range("samples", samples, low=1)
    if kind not in ("average", "worst"):
        raise ValueError(f"kind={kind!r}: choose average or worst")
    theta = op.theta()
    scale = theta.abs() if adaptive else torch.ones_like(theta)
    gen = torch.Generator(device=theta.device).manual_seed(seed)
    try:
        base = op.loss()

        def loss_at(u: Tensor) -> float:
            op.set_theta(theta + scale * u)
            return op.loss() - base

        best_u, best, total = torch.zeros_like(theta), 0.0, 0.0
        for _ in range(samples):
            z = torch.randn(theta.shape, generator=gen, dtype=theta.dtype, device=theta.device)
            u = rho * z / z.norm()
            rise = loss_at(u)
            total += rise
            if rise > best or _ == 0:
                best_u, best = u, rise
        value = total / samples
        if kind == "worst":
            value = _ascend(op, theta, scale, best_u, best, rho, steps, loss_at)
    finally:
        op.set_theta(theta)
    return {"value": value, "rho": rho, "kind": kind, "adaptive": adaptive, "base_loss": base}


def _ascend(
    op: HessianOperator, theta: Tensor, scale: Tensor, u: Tensor, best: float, rho: float, steps: int, loss_at: Any
) -> float:
    """The best loss rise seen along projected normalized gradient ascent in the ρ-ball from ``u``."""
    for _ in range(steps):
        op.set_theta(theta + scale * u)
        g = scale * op.gradient()
        norm = g.norm()
        if norm == 0:
            break
        u = u + 0.5 * rho * g / norm
        u = u * min(1.0, rho / float(u.norm()))
        best = max(best, loss_at(u))
    return best
