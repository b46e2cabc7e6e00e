"""The Conv2d double backward made of forward/backward kernels, against float64 finite differences and PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.regularizers.conv_grad import conv2d_train
from losslab.regularizers.double_backward import use_fast_double_backward

CASES = [  # (in, out, kernel, stride, padding, dilation, groups, bias)
    (2, 3, 3, 1, 1, 1, 1, True),
    (2, 4, 3, 2, 0, 1, 1, False),
    (4, 4, 3, 1, 2, 2, 2, True),
    (3, 6, 1, 2, 0, 1, 3, False),
    (2, 2, (3, 1), (1, 2), (1, 0), 1, 1, True),
]


def _operands(case: tuple, x_grad: bool = True) -> tuple[torch.Tensor, ...]:
    cin, cout, kernel, _, _, _, groups, bias = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 6, 5, generator=gen, dtype=torch.float64, requires_grad=x_grad)
    w = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    return x, w, b


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


@pytest.mark.parametrize("case", CASES)
def test_first_and_second_derivatives_pass_float64_finite_differences(case: tuple) -> None:
    x, w, b = _operands(case)
    _, _, _, stride, padding, dilation, groups, _ = case
    geometry = (_pair(stride), _pair(padding), _pair(dilation), groups)
    inputs = (x, w) if b is None else (x, w, b)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return conv2d_train(args[0], args[1], args[2] if len(args) > 2 else None, *geometry)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def _second_order(conv, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """∇ of a nonlinear function of the first-order gradients of a nonlinear loss of conv(x)."""
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    y = conv(x, w, b)
    loss = (y.tanh() * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum()
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    r = sum(g.square().sum() + g.abs().mean() for g in grads)
    return torch.autograd.grad(r, leaves)


@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_double_backward_equals_pytorchs(case: tuple, x_grad: bool) -> None:
    x, w, b = _operands(case, x_grad=x_grad)
    _, _, _, stride, padding, dilation, groups, _ = case
    geometry = (_pair(stride), _pair(padding), _pair(dilation), groups)
    ours = _second_order(lambda x, w, b: conv2d_train(x, w, b, *geometry), x, w, b)
    ref = _second_order(lambda x, w, b: F.conv2d(x, w, b, *geometry), x, w, b)
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_swap_covers_conv2d_only_while_training_and_restores() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    x = torch.randn(2, 2, 5, 5)
    before = model(x)
    restore = use_fast_double_backward(model, batchnorm=False)
    assert all("forward" in m.__dict__ for m in model)
    torch.testing.assert_close(model(x), before)  # reflect padding falls back to the module's own forward
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    restore()
    assert not any("forward" in m.__dict__ for m in model)


def test_third_order_is_refused() -> None:
    x, w, b = _operands(CASES[0])
    y = conv2d_train(x, w, b, (1, 1), (1, 1), (1, 1), 1)
    gw = torch.autograd.grad(y.pow(3).sum(), w, create_graph=True)[0]
    second = torch.autograd.grad(gw.square().sum(), x, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second.sum().backward()


def test_subclasses_with_their_own_forward_are_left_alone() -> None:
    """timm's StdConv2d standardizes its weight in forward: swapping it for a plain conv would change the model."""
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(StdConv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 1), nn.SyncBatchNorm(3))
    restore = use_fast_double_backward(model)
    assert ["forward" in m.__dict__ for m in model] == [False, True, False]
    restore()
