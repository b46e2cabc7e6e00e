"""Training-mode BatchNorm with a hand-derived double backward, for gradient-norm regularizers.

Double backprop (``torch.autograd.grad(..., create_graph=True)`` then a second backward, as LPGrad does) runs
PyTorch's generic ``batchnorm_double_backward``, which builds about 35 full-size elementwise kernels per BatchNorm
layer: 23 % of an LPGrad step on a CIFAR ResNet-20 on CPU. This module replaces it, for the duration of training,
with closed forms that need about ten full-size passes.

Notation, per channel over its N = B·H·W entries: μ = mean(x), σ² = mean((x − μ)²), s = (σ² + ε)^(−1/2),
x̂ = (x − μ)·s, y = γ·x̂ + β, and the projection P(v) = v − mean(v) − x̂·mean(v·x̂) (self-adjoint, P(x̂) = 0).

First backward (what ``native_batch_norm_backward`` computes), given g = ∂L/∂y::

    ∂L/∂β = Σ g = N·m₁,   ∂L/∂γ = Σ g·x̂ = N·m₂,   ∂L/∂x = γ·s·P(g) = γ·s·(g − m₁ − x̂·m₂)

Double backward: with adjoints a = ḡ_x (full size), ḡ_γ, ḡ_β (per channel) of those three outputs, and using
dx̂ = s·P(dx), ds = −(s²/N)·⟨x̂, dx⟩, c = ⟨a, P(g)⟩::

    ḡ      = γ·s·P(a) + ḡ_γ·x̂ + ḡ_β
    γ̄      = s·c
    x̄      = s·P(w) − (γ·s²·c / N)·x̂,   w = −γ·s·m₂·a + (ḡ_γ − γ·s·⟨a, x̂⟩/N)·g

and P(w) = −γ·s·m₂·P(a) + (ḡ_γ − γ·s·⟨a, x̂⟩/N)·P(g), so no second projection is needed. The float64
``gradgradcheck`` and the comparison with PyTorch's double backward in ``tests/regularizers`` hold these.

Forward values, running statistics and the first backward are PyTorch's own kernels (``native_batch_norm`` and
``native_batch_norm_backward``), so a model trains identically with and without the swap. Third-order
derivatives are refused (``once_differentiable``). The fast path applies to affine float32/float64 BatchNorm in
training mode outside autocast; anything else runs the module's own forward.

:func:`losslab.regularizers.double_backward.use_fast_double_backward` swaps it into a model's BatchNorm layers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """A per-channel vector shaped (1, C, 1, ...) to broadcast against an ``ndim``-dimensional activation."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim))


class _BatchNormBackward(torch.autograd.Function):
    """(g, x, γ) ↦ (∂L/∂x, ∂L/∂γ, ∂L/∂β) with the closed-form double backward of the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, g: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(g, x, mean, invstd, weight, grad_w, grad_b)
        return grad_x, grad_w, grad_b

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, a: Tensor, bar_w: Tensor, bar_b: Tensor
    ) -> tuple[Tensor | None, ...]:
        g, x, mean, invstd, weight, grad_w, grad_b = ctx.saved_tensors  # type: ignore[attr-defined]
        ndim, dims = g.dim(), _reduce_dims(g.dim())
        n = g.numel() // g.shape[1]
        s, mu = _channel_view(invstd, ndim), _channel_view(mean, ndim)
        gamma_s = _channel_view(weight, ndim) * s
        m1, m2 = _channel_view(grad_b, ndim) / n, _channel_view(grad_w, ndim) / n
        # three per-channel sums of a; x̂ = s·(x − μ) is never materialised, one full-size scratch buffer
        scratch = torch.mul(a, x)
        a_dot_x = scratch.sum(dim=dims, keepdim=True)
        a_dot_g = torch.mul(a, g, out=scratch).sum(dim=dims, keepdim=True)
        del scratch
        sum_a = a.sum(dim=dims, keepdim=True)
        a_dot_xhat = s * (a_dot_x - mu * sum_a)  # ⟨a, x̂⟩
        c = a_dot_g - m1 * sum_a - m2 * a_dot_xhat  # ⟨a, P(g)⟩
        bar_w_v, bar_b_v = _channel_view(bar_w, ndim), _channel_view(bar_b, ndim)
        k = bar_w_v - gamma_s * a_dot_xhat / n
        # ḡ = γs·P(a) + ḡ_γ·x̂ + ḡ_β = γs·a + k·x̂ + (ḡ_β − γs·mean(a)), with x̂ = s·x − s·μ
        grad_g = torch.addcmul(bar_b_v - gamma_s * sum_a / n - k * s * mu, a, gamma_s).addcmul_(x, k * s)
        # x̄ = s·(k·P(g) − γs·m₂·P(a)) − (γs²·c/N)·x̂, expanded into per-channel coefficients of g, a, x and 1
        coef_xhat = s * gamma_s * m2 * a_dot_xhat / n - s * k * m2 - gamma_s * s * c / n
        const = s * gamma_s * m2 * sum_a / n - s * k * m1 - coef_xhat * s * mu
        grad_x = torch.addcmul(const, g, s * k).addcmul_(a, -s * gamma_s * m2).addcmul_(x, coef_xhat * s)
        grad_weight = (s * c).flatten()
        return grad_g, grad_x, grad_weight, None, None, None


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch normalisation y = γ·x̂ + β whose backward is :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
    ) -> Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_x, grad_w, grad_b = _BatchNormBackward.apply(g, x, weight, mean, invstd, ctx.eps)  # type: ignore[attr-defined]
        return grad_x, grad_w, grad_b, None, None, None, None


def batch_norm_train(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training=True, ...)`` with a cheap double backward.

    Same values, running-statistics update and first-order gradients as PyTorch's kernel; the second-order
    gradients follow the closed forms of the module docstring.
    """
    return _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)
