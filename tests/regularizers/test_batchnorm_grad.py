"""The hand-derived BatchNorm double backward against autograd's and against float64 finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.regularizers.batchnorm_grad import batch_norm_train
from losslab.regularizers.double_backward import use_fast_double_backward


def _inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    weight = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64).requires_grad_()
    return x, weight, bias


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (4, 3, 2, 3), (2, 2, 2, 2, 3)])
def test_first_and_second_derivatives_pass_float64_finite_differences(shape: tuple[int, ...]) -> None:
    x, weight, bias = _inputs(shape)
    fn = lambda x, w, b: batch_norm_train(x, w, b, eps=1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight, bias))
    assert torch.autograd.gradgradcheck(fn, (x, weight, bias))


def _second_order(bn) -> tuple[torch.Tensor, ...]:
    """∇ of a nonlinear function of all three first-order gradients of a nonlinear loss of y = bn(x)."""
    x, weight, bias = _inputs((5, 3, 4, 4), seed=1)
    y = bn(x, weight, bias)
    loss = (y.sin() * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum() + y.square().mean()
    gx, gw, gb = torch.autograd.grad(loss, (x, weight, bias), create_graph=True)
    r = gx.square().sum() + gw.pow(3).sum() + (gb * torch.arange(3.0, dtype=gb.dtype)).sum() + gx.abs().mean()
    return torch.autograd.grad(r, (x, weight, bias))


def test_double_backward_equals_pytorchs() -> None:
    ours = _second_order(lambda x, w, b: batch_norm_train(x, w, b))
    ref = _second_order(lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5))
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)


def test_third_order_is_refused() -> None:
    x, weight, bias = _inputs((4, 3, 2, 2))
    gx = torch.autograd.grad(batch_norm_train(x, weight, bias).pow(3).sum(), x, create_graph=True)[0]
    second = torch.autograd.grad(gx.square().sum(), x, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second.sum().backward()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_swapped_module_trains_like_the_original(momentum: float | None) -> None:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(), nn.Flatten())
    fast = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(), nn.Flatten())
    fast.load_state_dict(ref.state_dict())
    restore = use_fast_double_backward(fast, conv=False)
    assert "forward" in fast[1].__dict__
    for step in range(3):
        x = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        outs = []
        for model in (ref, fast):
            model.zero_grad()
            out = model(x)
            out.square().mean().backward()
            outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0])
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value, msg=key)
    fast.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fast(x), ref.eval()(x))
    restore()
    assert "forward" not in fast[1].__dict__
    assert type(fast[1]) is nn.BatchNorm2d
