"""Conv2d with a double backward made of PyTorch's fast convolution kernels, for gradient-norm regularizers.

PyTorch's generic ``_convolution_double_backward`` computes the weight-gradient terms of the second-order pass as
convolutions of transposed (C, N, H, W) copies of the activations, which on CPU (oneDNN) cost about three times the
dedicated weight-gradient kernel plus the copies. Here the second-order pass is written with the same kernels as a
plain step: ``F.conv2d`` (forward) and ``aten.convolution_backward`` with one output each.

With y = conv(x, W) + b, the first backward maps g = ∂L/∂y to (∂L/∂x, ∂L/∂W, ∂L/∂b) = (Dₓᵀg, D_Wᵀ(x, g), Σg), where
Dₓᵀ is the input-gradient (transposed convolution) and D_Wᵀ the weight-gradient operator. Given adjoints (ā, Ā, ḃ) of
those three outputs, the second-order pass needs::

    ḡ = conv(ā, W) + conv(x, Ā) + ḃ          (the adjoint of Dₓᵀ is the forward convolution)
    W̄ = D_Wᵀ(ā, g)                           (weight gradient with input ā and output gradient g)
    x̄ = Dₓᵀ(g; Ā)                            (input gradient with weight Ā and output gradient g)

Two forward convolutions and two single-output backward kernels, the same work as ``_convolution_double_backward``
with faster kernels. float64 ``gradgradcheck`` over strides, padding, dilation, groups and bias, and equality with
PyTorch's double backward on a ResNet, are in ``tests/regularizers/test_conv_grad.py``. Third derivatives are refused
(``once_differentiable``). Only ``padding_mode="zeros"`` and float32/float64 outside autocast take this path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

_convolution_backward = torch.ops.aten.convolution_backward


class _ConvBackward(torch.autograd.Function):
    """(g, x, W) ↦ (Dₓᵀg, D_Wᵀ(x, g), Σg) for the outputs in ``mask``; placeholders (empty tensors) elsewhere."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        g: Tensor,
        x: Tensor,
        weight: Tensor,
        mask: tuple[bool, bool, bool],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        bias_sizes = [weight.shape[0]] if mask[2] else None
        outs = _convolution_backward(
            g, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, list(mask)
        )
        ctx.save_for_backward(g, x, weight)
        ctx.conv = (stride, padding, dilation, groups)  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return tuple(out if out is not None else g.new_empty(0) for out in outs)  # type: ignore[return-value]

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, bar_x: Tensor | None, bar_w: Tensor | None, bar_b: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        g, x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, dilation, groups = ctx.conv  # type: ignore[attr-defined]
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        bar_x = bar_x if bar_x is not None and bar_x.numel() else None
        bar_w = bar_w if bar_w is not None and bar_w.numel() else None
        bar_b = bar_b if bar_b is not None and bar_b.numel() else None
        grad_g = grad_x = grad_w = None
        if need_g:
            terms = []
            if bar_x is not None:
                terms.append(F.conv2d(bar_x, weight, None, stride, padding, dilation, groups))
            if bar_w is not None:
                terms.append(F.conv2d(x, bar_w, None, stride, padding, dilation, groups))
            grad_g = sum(terms[1:], terms[0]) if terms else None
            if bar_b is not None:
                per_channel = bar_b.view(1, -1, 1, 1)
                grad_g = per_channel.expand_as(g).contiguous() if grad_g is None else grad_g + per_channel
        if need_w and bar_x is not None:
            grad_w = _convolution_backward(
                g, bar_x, weight, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False]
            )[1]
        if need_x and bar_w is not None:
            grad_x = _convolution_backward(
                g, x, bar_w, None, stride, padding, dilation, False, [0, 0], groups, [True, False, False]
            )[0]
        return grad_g, grad_x, grad_w, None, None, None, None, None


class _ConvTrain(torch.autograd.Function):
    """y = conv2d(x, W, b) whose backward is :class:`_ConvBackward` (so its double backward is the closed form)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)  # type: ignore[attr-defined]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = (bool(need_x), bool(need_w), bool(need_b and ctx.has_bias))  # type: ignore[attr-defined]
        grad_x, grad_w, grad_b = _ConvBackward.apply(g, x, weight, mask, *ctx.conv)  # type: ignore[attr-defined]
        return (
            grad_x if mask[0] else None,
            grad_w if mask[1] else None,
            grad_b if mask[2] else None,
            None,
            None,
            None,
            None,
        )


def conv2d_train(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` (numeric padding, 4-D input) with the closed-form double backward of the module docstring."""
    return _ConvTrain.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)
