"""Binary rooted logistic loss and the GAN terms (objectives spec §3b, gan_and_regression spec §1-§2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losslab.errors import ConfigError
from losslab.objectives import gan_losses, rooted_logistic, rooted_loss_convex

T = torch.linspace(-50.0, 50.0, 201, dtype=torch.float64)


def closed_forms(t: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ℓ, ℓ', ℓ'' from the spec in float64."""
    sig, sig_neg = torch.sigmoid(t), torch.sigmoid(-t)  # σ(−t), not 1 − σ(t), which rounds to 0 for t ≫ 0
    root = torch.exp(torch.logaddexp(-t, torch.zeros_like(t)) / k)  # (1 + e^{−t})^{1/k}
    return k * root, -sig_neg * root, root * sig_neg * (sig + sig_neg / k)


@pytest.mark.parametrize("k", [1.0, 2.0, 5.0])
def test_value_and_derivatives_match_finite_differences(k: float) -> None:
    value, d1, d2 = closed_forms(T, k)
    torch.testing.assert_close(rooted_logistic(T, k), value, rtol=1e-12, atol=0)
    h = 1e-4
    fd1 = (rooted_logistic(T + h, k) - rooted_logistic(T - h, k)) / (2 * h)
    fd2 = (rooted_logistic(T + h, k) - 2 * rooted_logistic(T, k) + rooted_logistic(T - h, k)) / h**2
    torch.testing.assert_close(fd1, d1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fd2, d2, rtol=1e-4, atol=1e-7)
    assert (d2 > 0).all()  # strictly convex
    t = T.clone().requires_grad_()
    (g,) = torch.autograd.grad(rooted_logistic(t, k).sum(), t)
    torch.testing.assert_close(g, d1, rtol=1e-12, atol=1e-300)
    assert torch.autograd.gradgradcheck(lambda x: rooted_logistic(x, k), (T[::20].clone().requires_grad_(),))


def test_multiclass_convex_form_reduces_to_binary() -> None:
    """With C = 2 and z = (0, t), y = 1: k·exp(CE/k) = ℓ_k(t)."""
    t = torch.linspace(-8, 8, 17, dtype=torch.float64)
    z = torch.stack([torch.zeros_like(t), t], -1)
    got = rooted_loss_convex(z, torch.ones(17, dtype=torch.long), k=2.0, reduction="none")
    torch.testing.assert_close(got, rooted_logistic(t, 2.0), rtol=1e-12, atol=0)


def test_subtract_k_tends_to_logistic_from_above_and_no_overflow() -> None:
    logistic = F.softplus(-T)
    previous = None
    for k in (1.0, 10.0, 1e3, 1e6):
        gap = rooted_logistic(T, k, subtract_k=True) - logistic
        rounding = 1e-14 * logistic  # float64 rounding where the gap falls below eps·logistic (t ≫ 0)
        assert (gap >= -rounding).all()
        if previous is not None:
            assert (gap <= previous + rounding).all()
        previous = gap
    torch.testing.assert_close(rooted_logistic(T, 1e8, subtract_k=True), logistic, rtol=1e-6, atol=1e-12)
    # |t| = 1e3 in float64: the raw (1 + e^{−t})^{1/k} overflows (e^{1000} = inf), the softplus form gives e^{500}
    big = torch.tensor([-1e3, 1e3], dtype=torch.float64, requires_grad=True)
    value = rooted_logistic(big, 2.0)
    value.sum().backward()
    assert torch.isinf((1 + torch.exp(-big.detach())) ** 0.5).any()
    assert torch.isfinite(value).all() and torch.isfinite(big.grad).all()
    assert value[0].item() == pytest.approx(2 * math.exp(500.0), rel=1e-12)


def test_gan_logistic_terms_are_softplus() -> None:
    fake, real = torch.randn(8, 1), torch.randn(8, 1)
    terms = gan_losses(fake, real, kind="logistic")
    torch.testing.assert_close(terms.g, F.softplus(-fake), rtol=2.4e-7, atol=0)  # 2 float32 ulps
    torch.testing.assert_close(terms.d_fake, F.softplus(fake), rtol=2.4e-7, atol=0)  # 2 float32 ulps
    torch.testing.assert_close(terms.d_real, F.softplus(-real), rtol=2.4e-7, atol=0)  # 2 float32 ulps


def test_gan_rooted_terms_replace_each_softplus() -> None:
    fake, real = torch.randn(8, 1, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    terms = gan_losses(fake, real, kind="rooted", k=2.0)
    assert terms.g.shape == (8, 1)
    torch.testing.assert_close(terms.g, 2 * torch.exp(F.softplus(-fake) / 2))
    torch.testing.assert_close(terms.d_fake, 2 * torch.exp(F.softplus(fake) / 2))
    torch.testing.assert_close(terms.d_real, 2 * torch.exp(F.softplus(-real) / 2))


def test_gan_rooted_terms_tend_to_softplus_as_k_grows() -> None:
    fake, real = 5 * torch.randn(16, 1, dtype=torch.float64), 5 * torch.randn(16, 1, dtype=torch.float64)
    logistic = gan_losses(fake, real, kind="logistic")
    errors = []
    for k in (2.0, 100.0, 1e6):
        rooted = gan_losses(fake, real, kind="rooted", k=k, subtract_k=True)
        errors.append(max((r - l).abs().max().item() for r, l in zip(rooted, logistic)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_gan_terms_finite_for_fp16_logits() -> None:
    """|D| = 150 with k = 2: e^{75} overflows fp16 (max 65504) but not the float32 the terms are computed in.

    The gradient w.r.t. fp16 logits is cast back to fp16, so it is finite only while e^{|D|/k} < 65504 (|D| < 22).
    """
    big = torch.tensor([[-150.0], [-30.0], [0.0], [30.0], [150.0]], dtype=torch.float16)
    for kind in ("logistic", "rooted"):
        terms = gan_losses(big, big.flip(0), kind=kind, k=2.0)
        assert all(term.dtype == torch.float32 and torch.isfinite(term).all() for term in terms)
        # computed in fp16 the rooted terms would overflow: 2·exp(softplus(150)/2) > 65504
        assert kind == "logistic" or terms.g.max().item() > 65504
    fake = torch.tensor([[-20.0], [-5.0], [0.0], [5.0], [20.0]], dtype=torch.float16, requires_grad=True)
    real = fake.detach().flip(0).requires_grad_()
    for kind in ("logistic", "rooted"):
        terms = gan_losses(fake, real, kind=kind, k=2.0)
        g_fake, g_real = torch.autograd.grad(sum(term.sum() for term in terms), (fake, real))
        assert torch.isfinite(g_fake).all() and torch.isfinite(g_real).all()


def test_gan_bad_input() -> None:
    x = torch.zeros(2, 1)
    with pytest.raises(ConfigError, match="kind='hinge' is not allowed: choose one of logistic, rooted"):
        gan_losses(x, x, kind="hinge")
    with pytest.raises(ConfigError, match="allowed k > 0"):
        gan_losses(x, x, kind="rooted", k=0.0)
    with pytest.raises(ConfigError, match="allowed k > 0"):
        rooted_logistic(x, -1.0)
