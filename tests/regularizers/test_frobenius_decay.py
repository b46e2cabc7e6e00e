"""Frobenius decay against regularizers.md §5: the 2- and 3-factor oracles, loss side == gradient side."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losslab.errors import ConfigError, LosslabError
from losslab.regularizers import (
    FrobeniusDecay,
    create,
    frobenius_decay_grads,
    frobenius_norm,
    squared_frobenius_norm,
)

U0 = [[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]]
V0 = [[1.0, 0.0], [1.0, 1.0]]
GRAD_U = torch.tensor([[4.0, 3.0], [1.0, 1.0], [2.0, 1.0]])
GRAD_V = torch.tensor([[2.0, 2.0], [4.0, 7.0]])
GRAD_M = torch.tensor([[6.0, 4.0], [9.0, 7.0]])


class Factored(nn.Module):
    """A toy factorized layer: W = U Vᵀ (or U M Vᵀ); V optionally stored transposed; a bias that FD ignores."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, m: torch.Tensor | None = None, store_vt: bool = False):
        super().__init__()
        self.u = nn.Parameter(u.clone())
        self.m = None if m is None else nn.Parameter(m.clone())
        self.store_vt = store_vt
        self.v = nn.Parameter(v.t().clone() if store_vt else v.clone())
        self.bias = nn.Parameter(torch.zeros(u.shape[-2]))

    def factors(self) -> tuple[torch.Tensor, ...]:
        v = self.v.mT if self.store_vt else self.v
        return (self.u, v) if self.m is None else (self.u, self.m, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.u @ self.m @ self.factors()[-1].mT if self.m is not None else self.u @ self.factors()[-1].mT
        return x @ w.mT + self.bias


def oracle(three: bool = False, store_vt: bool = False) -> nn.Module:
    m = torch.eye(2) if three else None
    return nn.Sequential(Factored(torch.tensor(U0), torch.tensor(V0), m, store_vt), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("lam", [1.0, 0.25])
def test_two_factor_oracle(lam: float) -> None:
    model = oracle()
    penalty = FrobeniusDecay(lam=lam).grad_term(model)
    layer = model[0]
    assert penalty.item() == pytest.approx(6.5 * lam)
    torch.testing.assert_close(layer.u.grad, lam * GRAD_U)
    torch.testing.assert_close(layer.v.grad, lam * GRAD_V)
    assert layer.bias.grad is None and model[2].weight.grad is None
    assert frobenius_norm(layer).item() == pytest.approx(math.sqrt(13))


def test_three_factor_oracle_with_identity_m() -> None:
    model = oracle(three=True)
    penalty = FrobeniusDecay(lam=1.0).grad_term(model)
    layer = model[0]
    assert penalty.item() == pytest.approx(6.5)
    torch.testing.assert_close(layer.u.grad, GRAD_U)
    torch.testing.assert_close(layer.v.grad, GRAD_V)
    torch.testing.assert_close(layer.m.grad, GRAD_M)


def test_transposed_storage_gets_transposed_gradient() -> None:
    model = oracle(store_vt=True)
    FrobeniusDecay(lam=1.0).grad_term(model)
    torch.testing.assert_close(model[0].v.grad, GRAD_V.t())


def test_grad_term_adds_to_existing_grad() -> None:
    model = oracle()
    model[0].u.grad = torch.ones(3, 2)
    FrobeniusDecay(lam=1.0).grad_term(model)
    torch.testing.assert_close(model[0].u.grad, GRAD_U + 1)


def dense_reference_grads(factors: list[torch.Tensor], lam: float) -> list[torch.Tensor]:
    """Gradients of (λ/2)‖U (M) Vᵀ‖²_F through the dense product, in float64."""
    leaves = [f.detach().double().requires_grad_(True) for f in factors]
    w = leaves[0] @ leaves[1] @ leaves[2].mT if len(leaves) == 3 else leaves[0] @ leaves[1].mT
    return list(torch.autograd.grad(0.5 * lam * w.square().sum(), leaves))


@pytest.mark.parametrize("shapes", [[(7, 3), (5, 3)], [(7, 3), (3, 4), (5, 4)], [(2, 6, 3), (2, 4, 3)]])
def test_closed_form_matches_dense_autograd(shapes: list[tuple[int, ...]]) -> None:
    factors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    for got, want in zip(frobenius_decay_grads(factors, 0.3), dense_reference_grads(factors, 0.3)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("three", [False, True])
def test_loss_side_equals_grad_side(three: bool) -> None:
    torch.manual_seed(1)
    m = torch.randn(4, 4) if three else None
    grad_model = Factored(torch.randn(9, 4), torch.randn(6, 4), m)
    loss_model = Factored(grad_model.u.data, grad_model.v.data, m)
    lam = 5e-4
    grad_side = FrobeniusDecay(lam=lam)
    loss_side = FrobeniusDecay(lam=lam, side="loss")
    assert grad_side.loss_term(grad_model, torch.zeros(()), 1) is None
    value = grad_side.grad_term(grad_model)
    loss_term = loss_side.loss_term(loss_model, torch.zeros(()), 1)
    assert loss_side.grad_term(loss_model) is None
    loss_term.backward()
    assert value.item() == pytest.approx(loss_term.item(), rel=1e-6)
    for name in ("u", "v", "m") if three else ("u", "v"):
        torch.testing.assert_close(getattr(grad_model, name).grad, getattr(loss_model, name).grad, atol=1e-6, rtol=1e-6)


def test_no_weight_decay_params_are_the_factors() -> None:
    for store_vt in (False, True):
        model = oracle(three=True, store_vt=store_vt)
        params = FrobeniusDecay(lam=1.0).no_weight_decay_params(model)
        assert [id(p) for p in params] == [id(model[0].u), id(model[0].m), id(model[0].v)]


def test_squared_norm_of_oracle() -> None:
    assert squared_frobenius_norm([torch.tensor(U0), torch.tensor(V0)]).item() == pytest.approx(13.0)


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="no module with a factors"):
        create("fd", lam=1e-4).attach(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="lam=-1"):
        create("frobenius_decay", lam=-1.0)
    with pytest.raises(ConfigError, match="side='both'"):
        create("frobenius_decay", lam=1.0, side="both")
    with pytest.raises(LosslabError, match="do not chain"):
        frobenius_decay_grads([torch.randn(3, 2), torch.randn(4, 3)], 1.0)
    with pytest.raises(LosslabError, match=r"\(U, V\) or \(U, M, V\)"):
        squared_frobenius_norm([torch.randn(3, 2)])


@pytest.mark.parametrize("square", [False, True])
def test_works_on_losslab_low_rank_layers(square: bool) -> None:
    """Duck typing against the layers package: grad side == loss side, factors (not bias) leave weight decay."""
    layers = pytest.importorskip("losslab.layers")
    grad_layer = layers.LowRankLinear(6, 5, 3, square=square)
    loss_layer = layers.LowRankLinear(6, 5, 3, square=square)
    loss_layer.load_state_dict(grad_layer.state_dict())
    FrobeniusDecay(lam=1e-3).grad_term(grad_layer)
    FrobeniusDecay(lam=1e-3, side="loss").loss_term(loss_layer, torch.zeros(()), 1).backward()
    for a, b in zip(grad_layer.factors(), loss_layer.factors()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6)
    no_decay = FrobeniusDecay(lam=1e-3).no_weight_decay_params(grad_layer)
    assert [id(p) for p in no_decay] == [id(f) for f in grad_layer.factors()]
