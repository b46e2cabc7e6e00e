"""Softmax gradient tampering (objectives spec §4): value, gradient identities, scaling and the autograd Function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losslab.objectives import cross_entropy, sgt_cross_entropy


def sgt_grad(z: torch.Tensor, target: torch.Tensor, **kwargs: float) -> torch.Tensor:
    z = z.detach().clone().requires_grad_()
    sgt_cross_entropy(z, target, **kwargs).backward()
    return z.grad


def detach_form(z: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """CE(z,q).detach() + CE(αz,q)/α − (CE(αz,q)/α).detach(): same value as CE, gradient (1/α)∇CE(αz, q)."""
    scaled = F.cross_entropy(alpha * z, q) / alpha
    return F.cross_entropy(z, q).detach() + scaled - scaled.detach()


def test_value_is_plain_cross_entropy() -> None:
    z = torch.randn(10, 6)
    y = torch.randint(0, 6, (10,))
    y[4] = -100
    for s in (0.0, 0.1):
        for reduction in ("mean", "sum", "none"):
            got = sgt_cross_entropy(z, y, alpha=0.3, label_smoothing=s, reduction=reduction)
            assert torch.equal(got, cross_entropy(z, y, label_smoothing=s, reduction=reduction))


def test_alpha_one_equals_ce_gradient() -> None:
    z = 4 * torch.randn(32, 10)
    y = torch.randint(0, 10, (32,))
    for s in (0.0, 0.1):
        (want,) = torch.autograd.grad(F.cross_entropy(z.requires_grad_(), y, label_smoothing=s), z)
        torch.testing.assert_close(sgt_grad(z, y, alpha=1.0, label_smoothing=s), want, rtol=0, atol=1e-7)


def test_alpha_to_zero_gives_uniform_minus_target() -> None:
    c = 7
    z = torch.randn(5, c, dtype=torch.float64)
    y = torch.randint(0, c, (5,))
    q = 0.9 * F.one_hot(y, c).double() + 0.1 / c
    got = sgt_grad(z, y, alpha=1e-9, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(got, 1 / c - q, rtol=0, atol=1e-8)


@pytest.mark.parametrize("alpha", [0.05, 0.25, 0.7])
def test_matches_detach_form_and_rows_sum_to_zero(alpha: float) -> None:
    z = 3 * torch.randn(16, 9, dtype=torch.float64)
    q = torch.softmax(torch.randn(16, 9, dtype=torch.float64), -1)
    got = sgt_grad(z, q, alpha=alpha)
    zz = z.clone().requires_grad_()
    detach_form(zz, q, alpha).backward()
    torch.testing.assert_close(got, zz.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.sum(-1), torch.zeros(16, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_gradient_matches_finite_differences_of_tempered_ce(alpha: float) -> None:
    """Backward is (1/α)∇_z CE(αz, q): check against central differences of that function in float64."""
    z = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([1, -100, 3])
    valid = y != -100

    def tempered(x: torch.Tensor) -> float:
        return F.cross_entropy(alpha * x, y, label_smoothing=0.1).item() / alpha

    numeric = torch.zeros_like(z)
    h = 1e-6
    for idx in torch.cartesian_prod(torch.arange(3), torch.arange(4)).tolist():
        step = torch.zeros_like(z)
        step[tuple(idx)] = h
        numeric[tuple(idx)] = (tempered(z + step) - tempered(z - step)) / (2 * h)
    got = sgt_grad(z, y, alpha=alpha, label_smoothing=0.1)
    torch.testing.assert_close(got, numeric, rtol=1e-6, atol=1e-9)
    assert (got[~valid] == 0).all()


def test_gradcheck_at_alpha_one() -> None:
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda x: sgt_cross_entropy(x, q, alpha=1.0, label_smoothing=0.1), (z,))


@pytest.mark.parametrize("scale", [2.0**15, 2.0**16, 2.0**17])
@pytest.mark.parametrize("batch", [7, 256])
def test_grad_output_scale_gives_exactly_scaled_gradient(scale: float, batch: int) -> None:
    """A GradScaler scale S arrives through grad_output: gradient is exactly S× the unscaled one, for any N.

    The original hook recovered p only when S = N² (NaN at S = 2^17, 2× too large at S = 2^15 for N = 256).
    """
    z = torch.randn(batch, 100)
    y = torch.randint(0, 100, (batch,))
    plain = sgt_grad(z, y, alpha=0.25)
    zz = z.clone().requires_grad_()
    (sgt_cross_entropy(zz, y, alpha=0.25) * scale).backward()
    assert torch.equal(zz.grad, plain * scale)


def test_gradient_accumulation_and_second_loss_compose() -> None:
    """Two backward passes (accumulation) and an extra loss on the same logits add up, unlike the original hook."""
    z = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    zz = z.clone().requires_grad_()
    sgt_cross_entropy(zz, y, alpha=0.5).backward()
    sgt_cross_entropy(zz, y, alpha=0.5, reduction="sum").backward()
    (zz.square().sum()).backward()
    expected = sgt_grad(z, y, alpha=0.5) * (1 + 8) + 2 * z
    torch.testing.assert_close(zz.grad, expected, rtol=1e-6, atol=1e-7)


def test_extreme_logits() -> None:
    z = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]])
    y = torch.tensor([0, 1])
    grad = sgt_grad(z, y, alpha=0.25)
    assert torch.isfinite(grad).all()
    # softmax(α·z) is one-hot on class 0 for both rows; mean over 2 rows
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.5, 0.0]]))


def test_bf16_autocast_cpu_runs_in_fp32() -> None:
    layer = torch.nn.Linear(6, 4)
    x = torch.randn(12, 6)
    y = torch.randint(0, 4, (12,))
    (want,) = torch.autograd.grad(sgt_cross_entropy(layer(x), y, alpha=0.25), layer.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sgt_cross_entropy(layer(x), y, alpha=0.25)
    (got,) = torch.autograd.grad(loss, layer.weight)
    assert loss.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=5e-2, atol=2e-2)


@pytest.mark.gpu
def test_fp16_autocast_with_grad_scaler_on_gpu() -> None:
    """fp16 logits under CUDA autocast with a GradScaler: gradient = S × fp32 gradient to fp16 tolerance."""
    device = torch.device("cuda")
    layer = torch.nn.Linear(64, 1000).to(device)
    x = torch.randn(256, 64, device=device)
    y = torch.randint(0, 1000, (256,), device=device)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    with torch.autocast("cuda", dtype=torch.float16):
        logits16 = layer(x)
    logits16.retain_grad()
    logits32 = logits16.detach().float().requires_grad_()
    sgt_cross_entropy(logits32, y, alpha=0.25).backward()
    scaler.scale(sgt_cross_entropy(logits16, y, alpha=0.25)).backward()
    assert logits16.dtype == torch.float16 and torch.isfinite(logits16.grad).all()
    torch.testing.assert_close(logits16.grad.float(), logits32.grad * 2.0**16, rtol=1e-3, atol=1e-3)
