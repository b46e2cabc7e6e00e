"""The numeric oracles of objectives spec §6 (fixed case z = (2, −1, 0.5, 0), y = 2) and the closed forms of §2-§3."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.objectives import (
    create,
    cross_entropy,
    focal_loss,
    rooted_logistic,
    rooted_loss,
    rooted_loss_convex,
    sgt_cross_entropy,
)

Z = (2.0, -1.0, 0.5, 0.0)
Y = 2
P = (0.7101000, 0.0353540, 0.1584450, 0.0961010)
CE = 1.8423496
RTOL = 1e-5


def value_and_grad(name: str, dtype: torch.dtype = torch.float32, **kwargs: float) -> tuple[float, torch.Tensor]:
    z = torch.tensor([Z], dtype=dtype, requires_grad=True)
    loss = create(name, **kwargs)(z, torch.tensor([Y]))
    loss.backward()
    return loss.item(), z.grad[0]


CASES = [
    # name, kwargs, value, gradient (None: value only)
    ("ce", {}, CE, (0.7101000, 0.0353540, -0.8415550, 0.0961010)),
    ("ce", {"label_smoothing": 0.1}, 1.8548496, (0.6851000, 0.0103540, -0.7665550, 0.0711010)),
    ("focal", {"alpha": 0.25, "gamma": 2.0}, 0.3261950, (0.212947, 0.010602, -0.252368, 0.028819)),
    ("focal", {"alpha": 0.25, "gamma": 3.0}, 0.2745112, (0.215907, 0.010749, -0.255877, 0.029220)),
    ("focal_rlo_paper", {}, 0.2745112, (0.215907, 0.010749, -0.255877, 0.029220)),
    ("root", {"k": 3.0, "m": 3.0}, 1.3766438, (0.384248, 0.019131, -0.455381, 0.052002)),
    ("root", {"k": 5.0, "m": 5.0}, 1.5410399, None),
    ("root_convex", {"k": 3.0}, 5.5440696, (1.312281, 0.065335, -1.555214, 0.177598)),
    ("sgt", {"alpha": 0.25}, CE, (0.361509, 0.170765, -0.751539, 0.219266)),
    ("sgt", {"alpha": 0.25, "label_smoothing": 0.1}, 1.8548496, (0.336509, 0.145765, -0.676539, 0.194266)),
]


@pytest.mark.parametrize(("name", "kwargs", "value", "grad"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_case_values_and_gradients(name, kwargs, value, grad, dtype) -> None:
    got_value, got_grad = value_and_grad(name, dtype, **kwargs)
    assert got_value == pytest.approx(value, rel=RTOL)
    if grad is not None:
        # the oracle gradients have 6 decimals: 5e-7 absolute is their rounding
        torch.testing.assert_close(got_grad, torch.tensor(grad, dtype=dtype), rtol=RTOL, atol=5e-7)


def test_fixed_case_probabilities_and_gce_identity() -> None:
    z = torch.tensor(Z, dtype=torch.float64)
    torch.testing.assert_close(torch.softmax(z, 0), torch.tensor(P, dtype=torch.float64), rtol=RTOL, atol=0)
    p_y = torch.softmax(z, 0)[Y].item()
    q = 1 / 3
    gce = (1 - p_y**q) / q  # Zhang & Sabuncu, float64 reference
    assert rooted_loss(z[None], torch.tensor([Y]), k=3.0, m=3.0).item() == pytest.approx(gce, rel=1e-12)
    # general m: L = (m/k)·GCE_{q=1/k}
    got = rooted_loss(z[None], torch.tensor([Y]), k=4.0, m=10.0).item()
    assert got == pytest.approx(10.0 / 4.0 * (1 - p_y**0.25) / 0.25, rel=1e-12)


@pytest.mark.parametrize(
    ("k", "rooted", "convex"),
    [(10.0, 1.6825964, 2.0229828), (100.0, 1.8254821, 1.8594255), (1e4, 1.8421799, 1.8425193)],
)
def test_limits_table(k: float, rooted: float, convex: float) -> None:
    z = torch.tensor([Z])
    y = torch.tensor([Y])
    low = rooted_loss(z, y, k=k, m=k).item()
    high = rooted_loss_convex(z, y, k=k, subtract_k=True).item()
    assert low == pytest.approx(rooted, rel=RTOL)
    assert high == pytest.approx(convex, rel=RTOL)
    assert low < CE < high  # CE is approached from below and from above


def test_rooted_forms_tend_to_ce() -> None:
    z = torch.randn(64, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (64,))
    ce = cross_entropy(z, y).item()
    gaps_low = [ce - rooted_loss(z, y, k=k, m=k).item() for k in (10.0, 100.0, 1e3, 1e5)]
    gaps_high = [rooted_loss_convex(z, y, k=k, subtract_k=True).item() - ce for k in (10.0, 100.0, 1e3, 1e5)]
    assert all(g > 0 for g in gaps_low + gaps_high)
    assert gaps_low == sorted(gaps_low, reverse=True) and gaps_high == sorted(gaps_high, reverse=True)
    assert gaps_low[-1] < 1e-4 and gaps_high[-1] < 1e-4


def test_uniform_logits() -> None:
    for c in (3, 7, 1000):
        z = torch.zeros(5, c)
        y = torch.arange(5) % c
        for s in (0.0, 0.1, 0.5):
            assert cross_entropy(z, y, label_smoothing=s).item() == pytest.approx(math.log(c), rel=1e-6)
            assert sgt_cross_entropy(z, y, label_smoothing=s).item() == pytest.approx(math.log(c), rel=1e-6)
    z = torch.zeros(2, 3)
    y = torch.tensor([0, 2])
    assert rooted_loss(z, y, k=3.0, m=3.0).item() == pytest.approx(0.9199162, rel=RTOL)
    assert rooted_loss_convex(z, y, k=3.0).item() == pytest.approx(4.3267487, rel=RTOL)
    assert focal_loss(z, y, alpha=0.25, gamma=3.0).item() == pytest.approx(0.0813787, rel=RTOL)
    assert focal_loss(z, y, alpha=0.25, gamma=2.0).item() == pytest.approx(0.1220680, rel=RTOL)


@pytest.mark.parametrize(
    ("t", "value", "d1", "d2"),
    [
        (0.0, 3.7797631, -0.6299605, 0.4199737),
        (-5.0, 15.919064, -5.270840, 1.780465),
        (5.0, 3.0067229, -0.0067078, 0.0066779),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rooted_logistic_table(t: float, value: float, d1: float, d2: float, dtype: torch.dtype) -> None:
    x = torch.tensor(t, dtype=dtype, requires_grad=True)
    loss = rooted_logistic(x, k=3.0)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (h,) = torch.autograd.grad(g, x)
    assert loss.item() == pytest.approx(value, rel=RTOL)
    assert g.item() == pytest.approx(d1, rel=RTOL)
    assert h.item() == pytest.approx(d2, rel=RTOL)
