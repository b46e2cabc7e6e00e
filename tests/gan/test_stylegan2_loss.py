"""The StyleGAN2Loss-shaped class: logistic terms equal the softplus-form reference, rooted terms the spec's formula
(per term and through accumulate_gradients' parameter gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError
from losslab.gan.stylegan2 import RootedStyleGAN2Loss
from losslab.objectives.gan import gan_term


def rooted_ref(s: torch.Tensor, k: float) -> torch.Tensor:
    """The spec's replacement of softplus(s): k·(1 + e^s)^{1/k}, float64."""
    return k * (1 + torch.exp(s.double())) ** (1 / k)


@pytest.mark.parametrize("k", [1.0, 2.0, 5.0])
def test_terms_equal_softplus_reference_and_spec_formula(k: float) -> None:
    logits = torch.linspace(-20, 20, 81).reshape(-1, 1)
    torch.testing.assert_close(gan_term(logits, "g", "logistic"), F.softplus(-logits), rtol=1e-6, atol=0)
    torch.testing.assert_close(gan_term(logits, "d_fake", "logistic"), F.softplus(logits), rtol=1e-6, atol=0)
    torch.testing.assert_close(gan_term(logits, "d_real", "logistic"), F.softplus(-logits), rtol=1e-6, atol=0)
    for term, arg in (("g", -logits), ("d_fake", logits), ("d_real", -logits)):  # softplus(arg) → rooted
        torch.testing.assert_close(gan_term(logits, term, "rooted", k).double(), rooted_ref(arg, k), rtol=2e-6, atol=0)


class Mapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.fc(z)[:, None, :].repeat(1, 2, 1)  # ws [N, num_ws=2, 6]


class Synthesis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3 * 4 * 4)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.fc(ws.mean(1)).view(-1, 3, 4, 4)


class Disc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 1)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.fc(img.flatten(1))


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize(("kind", "k"), [("logistic", 2.0), ("rooted", 2.0), ("rooted", 4.0)])
def test_accumulate_gradients_equal_the_reference_terms(kind: str, k: float) -> None:
    torch.manual_seed(0)
    G_mapping, G_synthesis, D = Mapping().double(), Synthesis().double(), Disc().double()
    loss = RootedStyleGAN2Loss("cpu", G_mapping, G_synthesis, D, r1_gamma=0.5, pl_weight=0, kind=kind, k=k)
    real = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    z, c = torch.randn(8, 4, dtype=torch.float64), torch.zeros(8, 0, dtype=torch.float64)
    gain = 3.0

    def softplus_form(s: torch.Tensor) -> torch.Tensor:
        return F.softplus(s) if kind == "logistic" else k * torch.exp(F.softplus(s) / k)

    loss.accumulate_gradients("Dboth", real, c, z, c, sync=True, gain=gain)
    got_d = _grads(D)
    D.zero_grad()
    gen = G_synthesis(G_mapping(z, c)).detach()
    x = real.clone().requires_grad_(True)
    real_logits = D(x, c)
    (r1_grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
    ref = softplus_form(D(gen, c)).mean() + softplus_form(-real_logits).mean()
    ref = ref + (r1_grad.square().sum([1, 2, 3]) * 0.25).mean()
    (ref * gain).backward()
    for g, r in zip(got_d, _grads(D)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)

    for m in (G_mapping, G_synthesis, D):
        m.zero_grad()
    loss.accumulate_gradients("Gmain", real, c, z, c, sync=True, gain=gain)
    got_g = _grads(G_mapping) + _grads(G_synthesis)
    for m in (G_mapping, G_synthesis):
        m.zero_grad()
    (softplus_form(-D(G_synthesis(G_mapping(z, c)), c)).mean() * gain).backward()
    for g, r in zip(got_g, _grads(G_mapping) + _grads(G_synthesis)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_bad_kind_and_phase_are_refused() -> None:
    with pytest.raises(ConfigError, match="kind"):
        RootedStyleGAN2Loss("cpu", Mapping(), Synthesis(), Disc(), kind="hinge")
    with pytest.raises(ConfigError, match="k"):
        RootedStyleGAN2Loss("cpu", Mapping(), Synthesis(), Disc(), kind="rooted", k=0.0)
    loss = RootedStyleGAN2Loss("cpu", Mapping(), Synthesis(), Disc())
    with pytest.raises(ConfigError, match="phase"):
        loss.accumulate_gradients("Gall", torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), True, 1)
