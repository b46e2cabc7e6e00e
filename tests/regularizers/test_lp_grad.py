"""LPGrad against regularizers.md §1: the closed-form oracle, zero gradients, and float64 finite differences."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError, LosslabError
from losslab.regularizers import LPGrad, create

B = 4
P_SOFTMAX = torch.tensor([0.5600528, 0.0278834, 0.2060319, 0.2060319], dtype=torch.float64)


def oracle_model(weight: torch.Tensor | None = None) -> nn.Sequential:
    """Identity (the hooked 'activation' a) -> bias-free Linear(2, 4) with W = [[1,0],[0,1],[0,0],[0,0]]."""
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 4, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]) if weight is None else weight
        )
    return model


def oracle_step(reg: LPGrad, weight: torch.Tensor | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Run the oracle forward and return (model, task loss, regularizer term)."""
    model = oracle_model(weight)
    reg.attach(model)
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64).repeat(B, 1).requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.zeros(B, dtype=torch.long))
    return model, loss, reg.loss_term(model, loss, B)


def test_oracle_softmax_matches_spec() -> None:
    logits = oracle_model()(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(logits.softmax(-1)[0], P_SOFTMAX, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("p", "expected"), [(1, 2.6396832), (2, 1.1815865)])
def test_weight_term_oracle(p: int, expected: float) -> None:
    _, _, r = oracle_step(LPGrad(p=p, lam=1.0, activations=False))
    assert r.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("p", "legacy", "expected"),
    [(1, False, 0.4678306), (2, False, 0.4408299), (1, True, 0.1169576), (2, True, 0.1102075)],
)
def test_activation_term_oracle(p: int, legacy: bool, expected: float) -> None:
    reg = LPGrad(p=p, lam_w=0.0, lam_a=1.0, legacy_activation_scale=legacy, activation_names=["0"])
    _, _, r = oracle_step(reg)
    assert r.item() == pytest.approx(expected, abs=1e-6)
    assert reg.last_parts["a"].item() == pytest.approx(expected, abs=1e-6)


def test_lambdas_weight_each_term() -> None:
    reg = LPGrad(p=2, lam_w=0.5, lam_a=3.0, activation_names=["0"])
    _, _, r = oracle_step(reg)
    assert r.item() == pytest.approx(0.5 * 1.1815865 + 3.0 * 0.4408299, abs=1e-6)


def test_zero_weight_gives_zero_activation_term_and_finite_grads() -> None:
    for p in (1, 1.5, 2, 3):
        reg = LPGrad(p=p, lam=1.0, activation_names=["0"])
        model, loss, r = oracle_step(reg, weight=torch.zeros(4, 2))
        assert reg.last_parts["a"].item() == 0.0
        (loss + r).backward()
        assert torch.isfinite(model[1].weight.grad).all()


@pytest.mark.parametrize(
    "options", [{"p": 1}, {"p": 1.5}, {"p": 2}, {"p": 2, "squared": True}, {"p": 3, "combine": "global"}]
)
def test_all_zero_weight_gradient_has_finite_grads(options: dict) -> None:
    # Input 0 makes g_W = (p - e_y) 0ᵀ = 0 for the first layer.
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2))
    reg = LPGrad(lam=1.0, activations=False, **options)
    x = torch.zeros(5, 3)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1, 1]))
    r = reg.loss_term(model, loss, 5)
    (loss + r).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_no_grad_round_trip() -> None:
    model, _, r = oracle_step(LPGrad(p=2, lam=1.0, activation_names=["0"]))
    assert r.requires_grad
    assert model[1].weight.grad is None


class TinyMLP(nn.Module):
    """Linear -> Tanh -> Linear -> Tanh -> Linear, no BN; the two Tanh outputs are the activations."""

    activation_names: ClassVar[list[str]] = ["act1", "act2"]

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(3, 4), nn.Tanh()
        self.fc2, self.act2 = nn.Linear(4, 3), nn.Tanh()
        self.fc3 = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"p": 2},
        {"p": 1.5, "lam_w": 0.7, "lam_a": 1.3, "legacy_activation_scale": True},
        {"p": 3, "combine": "global"},
        {"p": 2, "squared": True},
    ],
)
def test_double_backprop_matches_float64_finite_differences(options: dict) -> None:
    model = TinyMLP().double()
    reg = LPGrad(lam=options.pop("lam", 1.0) if "lam_w" not in options else None, **options)
    reg.attach(model)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    params = list(model.parameters())

    def r_value() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        return reg.loss_term(model, loss, x.shape[0])

    analytic = torch.autograd.grad(r_value(), params)
    eps = 1e-6
    for param, grad in zip(params, analytic):
        numeric = torch.zeros_like(param)
        flat, out = param.data.view(-1), numeric.view(-1)
        for i in range(flat.numel()):
            orig = flat[i].item()
            flat[i] = orig + eps
            plus = r_value().item()
            flat[i] = orig - eps
            minus = r_value().item()
            flat[i] = orig
            out[i] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-5)
    reg.detach()


def test_combine_and_squared_match_reference_formulas() -> None:
    model = TinyMLP().double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, weights, retain_graph=True)
    flat = torch.cat([t.flatten() for t in g])
    cases = {
        ("layer", False, 3.0): sum(t.abs().pow(3).sum() ** (1 / 3) for t in g),
        ("global", False, 3.0): flat.abs().pow(3).sum() ** (1 / 3),
        ("layer", True, 2.0): sum(t.square().sum() for t in g),
    }
    for (combine, squared, p), expected in cases.items():
        reg = LPGrad(p=p, lam=1.0, activations=False, combine=combine, squared=squared)
        r = reg.loss_term(model, loss, 6)
        assert r.item() == pytest.approx(expected.item(), rel=1e-6)


def test_grad_scale_gives_the_same_value() -> None:
    _, _, plain = oracle_step(LPGrad(p=2, lam=1.0, activation_names=["0"]))
    _, _, scaled = oracle_step(LPGrad(p=2, lam=1.0, activation_names=["0"], grad_scale=1024.0))
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-9)


def test_capture_is_gated_by_active_train_mode_and_grad_mode() -> None:
    model = TinyMLP()
    reg = LPGrad(p=2, lam=1.0)
    reg.attach(model)
    x = torch.randn(2, 3)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    model.train()
    reg.set_active(False)
    model(x)
    assert reg._capture.take() == []
    reg.set_active(True)
    out = model(x)
    loss = F.cross_entropy(out, torch.tensor([0, 1]))
    assert reg.loss_term(model, loss, 2) is not None
    with pytest.raises(LosslabError, match="no captured activations"):
        reg.loss_term(model, loss, 2)  # loss_term consumed them
    reg.detach()
    model(x)
    assert reg._capture.take() == []


def test_l1grad_l2grad_presets() -> None:
    l1, l2 = create("l1grad", lam=0.1, activations=False), create("L2Grad", lmbda=0.1, activations=False)
    assert (l1.p, l1.name, l2.p, l2.name) == (1.0, "l1grad", 2.0, "l2grad")
    with pytest.raises(ConfigError, match="does not take"):
        create("l2grad", p=3, lam=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 0.5, "lam": 1.0}, "p=0.5"),
        ({"p": 2, "lam": -1.0}, "lam_w=-1.0"),
        ({"p": 2, "lam": 1.0, "lam_a": -0.1}, "lam_a=-0.1"),
        ({"p": 1, "lam": 1.0, "squared": True}, "squared=True needs p=2"),
        ({"p": 2, "lam": 1.0, "combine": "max"}, "combine='max'"),
        ({"p": 2}, "needs a strength"),
        ({"p": 2, "lam": 1.0, "lmbda": 1.0}, "not both"),
        ({"p": 2, "lam": math.nan}, "lam_w=nan"),
    ],
)
def test_bad_options_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LPGrad(**kwargs)


def test_missing_activation_names_raise_at_attach() -> None:
    with pytest.raises(ConfigError, match="activation_names"):
        LPGrad(p=2, lam=1.0).attach(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="not modules"):
        LPGrad(p=2, lam=1.0, activation_names=["nope"]).attach(nn.Sequential(nn.Linear(2, 2)))
    LPGrad(p=2, lam=1.0, activations=False).attach(nn.Sequential(nn.Linear(2, 2)))  # weights only: no names needed
