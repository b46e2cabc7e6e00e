"""LPGrad's fused path: same value and the same gradients for every parameter as loss + loss_term, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losslab.regularizers import create


class TinyNet(nn.Module):
    """Conv + BN + ReLU + Linear, with named post-ReLU activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)
        self.activation_names = ["act"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def grads_after(model: nn.Module, fused: bool, **kw: object) -> tuple[list[torch.Tensor], float]:
    torch.manual_seed(1)
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    reg = create("lp_grad", **kw)
    reg.attach(model)
    reg.set_active(True)
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if fused:
        term = reg.fused_loss_term(model, loss, 6)
        (loss.detach() + term).backward()
    else:
        term = reg.loss_term(model, loss, 6)
        (loss + term).backward()
    reg.detach()
    return [p.grad.clone() for p in model.parameters()], float(term)


@pytest.mark.parametrize("kw", [{"p": 2.0, "lam": 0.3}, {"p": 1.0, "lam": 0.1, "activations": False},
                                {"p": 3.0, "lam_w": 0.2, "lam_a": 0.5, "grad_scale": 1024.0}])
def test_fused_equals_double_backprop(kw: dict) -> None:
    torch.manual_seed(0)
    model = TinyNet().double()
    reference, value = grads_after(model, fused=False, **kw)
    fused, fused_value = grads_after(model, fused=True, **kw)
    assert fused_value == pytest.approx(value, rel=1e-12)  # the surrogate adds 0 to the value
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().sum()) > 0 for g in fused)
