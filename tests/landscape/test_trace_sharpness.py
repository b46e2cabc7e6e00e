"""Trace estimators (unbiased, Hutch++ variance below Hutchinson's) and sharpness against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landscape.oracle import ce, data, mlp, operator
from losslab.landscape import HessianOperator, hutch_plus_plus, hutchinson, sharpness


def dominant_matrix(dim: int = 60, seed: int = 0) -> torch.Tensor:
    """Symmetric, a few large eigenvalues (100, 50, 20) over a small bulk — the shape of a network Hessian."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([100.0, 50.0, 20.0], dtype=torch.float64), torch.rand(dim - 3, generator=g) - 0.3])
    return q @ torch.diag(lam) @ q.T


@pytest.mark.parametrize("estimator", ["hutchinson", "hutch++"])
def test_trace_estimators_are_unbiased(estimator: str) -> None:
    a = dominant_matrix()
    exact = float(a.trace())
    runs = 200
    values = []
    for seed in range(runs):
        if estimator == "hutchinson":
            values.append(hutchinson(lambda v: a @ v, 60, samples=6, seed=seed).trace)
        else:
            values.append(hutch_plus_plus(lambda v: a @ v, 60, rank=2, samples=2, seed=seed).trace)
    t = torch.tensor(values)
    se = float(t.std()) / math.sqrt(runs)
    assert abs(float(t.mean()) - exact) <= 3 * se


def test_hutch_plus_plus_has_lower_variance_at_equal_products() -> None:
    a = dominant_matrix()
    budget = 12  # products: Hutch++ 2·rank + samples = 2·4 + 4
    plain = torch.tensor([hutchinson(lambda v: a @ v, 60, samples=budget, seed=s).trace for s in range(200)])
    pp = [hutch_plus_plus(lambda v: a @ v, 60, rank=4, samples=4, seed=s) for s in range(200)]
    assert all(e.matvecs == budget for e in pp)
    assert torch.tensor([e.trace for e in pp]).var() < 0.25 * plain.var()


def test_stated_stderr_matches_spread_over_seeds() -> None:
    a = dominant_matrix()
    est = [hutchinson(lambda v: a @ v, 60, samples=50, seed=s) for s in range(200)]
    spread = float(torch.tensor([e.trace for e in est]).std())
    mean_stderr = sum(e.stderr for e in est) / len(est)
    assert 0.7 < mean_stderr / spread < 1.3


def test_stopping_rule_uses_absolute_value() -> None:
    """A negative trace stops on stderr <= tol·|estimate| as a positive one does."""
    a = -dominant_matrix()
    est = hutch_plus_plus(lambda v: a @ v, 60, rank=3, samples=500, tol=0.05, seed=0)
    assert est.samples < 500 and est.trace < 0 and est.stderr <= 0.05 * abs(est.trace)


def test_hutch_plus_plus_exact_when_rank_covers_space() -> None:
    a = dominant_matrix(20)
    est = hutch_plus_plus(lambda v: a @ v, 20, rank=20, seed=0)
    assert est.trace == pytest.approx(float(a.trace()), rel=1e-12) and est.stderr == 0.0


# ---------------------------------------------------------------- sharpness


class Quadratic(nn.Module):
    """Output ½(θ−θ*)ᵀA(θ−θ*), used directly as the loss: minimum 0 at θ*, Hessian A."""

    def __init__(self, a: torch.Tensor, at: torch.Tensor) -> None:
        super().__init__()
        self.a = a
        self.star = at.clone()
        self.theta = nn.Parameter(at.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.theta - self.star
        return 0.5 * d @ self.a @ d + 0 * x.sum()


def quadratic_op(a: torch.Tensor) -> HessianOperator:
    model = Quadratic(a, torch.randn(a.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return HessianOperator(model, lambda out, y: out, [(torch.zeros(2, dtype=torch.float64), torch.zeros(2))])


def test_sharpness_at_a_quadratic_minimum() -> None:
    """Average over the sphere of ½ρ²·uᵀAu → ½ρ²·tr(A)/P; worst case = ½ρ²·λ_max; both → 0 as ρ → 0."""
    a = dominant_matrix(30).abs() @ dominant_matrix(30).abs() / 100  # positive semi-definite
    op = quadratic_op(a)
    lam_max = float(torch.linalg.eigvalsh(a)[-1])
    for rho in (1.0, 1e-2, 1e-4):
        worst = sharpness(op, rho, "worst", steps=50, seed=0)["value"]
        avg = sharpness(op, rho, "average", samples=400, seed=0)["value"]
        assert worst <= 0.5 * rho**2 * lam_max * (1 + 1e-9) + 1e-300
        assert worst >= 0.99 * 0.5 * rho**2 * lam_max
        assert avg == pytest.approx(0.5 * rho**2 * float(a.trace()) / 30, rel=0.15)
        assert 0 <= avg <= worst
    assert worst < 1e-6


def test_worst_case_at_least_average_case() -> None:
    model = mlp(0)
    x, y = data(64, (4,))
    op = operator(model, x, y)
    theta = op.theta()
    for adaptive in (False, True):
        for rho in (0.05, 0.5):
            avg = sharpness(op, rho, "average", adaptive, samples=5, seed=1)["value"]
            worst = sharpness(op, rho, "worst", adaptive, samples=5, steps=3, seed=1)["value"]
            assert worst >= avg
            assert worst > avg + 1e-6  # the ascent improves on random directions
    assert torch.equal(op.theta(), theta)  # parameters restored


def test_adaptive_sharpness_invariant_under_relu_rescaling() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x, y = data(64, (4,))
    before = {
        k: sharpness(HessianOperator(net, ce, [(x, y)]), 0.3, k, True, samples=4, steps=4, seed=2)["value"]
        for k in ("average", "worst")
    }
    plain_before = sharpness(HessianOperator(net, ce, [(x, y)]), 0.3, "average", False, samples=4, seed=2)["value"]
    c = 7.0
    with torch.no_grad():
        net[0].weight.mul_(c)
        net[0].bias.mul_(c)
        net[2].weight.div_(c)
    after = {
        k: sharpness(HessianOperator(net, ce, [(x, y)]), 0.3, k, True, samples=4, steps=4, seed=2)["value"]
        for k in ("average", "worst")
    }
    plain_after = sharpness(HessianOperator(net, ce, [(x, y)]), 0.3, "average", False, samples=4, seed=2)["value"]
    for k in before:
        assert after[k] == pytest.approx(before[k], rel=1e-9)
    assert abs(plain_after - plain_before) > 0.01 * abs(plain_before)  # plain sharpness is not invariant
