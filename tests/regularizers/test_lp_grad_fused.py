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


@pytest.mark.parametrize(
    "kw",
    [
        {"p": 2.0, "lam": 0.3},
        {"p": 1.0, "lam": 0.1, "activations": False},
        {"p": 3.0, "lam_w": 0.2, "lam_a": 0.5, "grad_scale": 1024.0},
    ],
)
def test_fused_equals_double_backprop(kw: dict) -> None:
    torch.manual_seed(0)
    model = TinyNet().double()
    reference, value = grads_after(model, fused=False, **kw)
    fused, fused_value = grads_after(model, fused=True, **kw)
    assert fused_value == pytest.approx(value, rel=1e-12)  # the surrogate adds 0 to the value
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().sum()) > 0 for g in fused)


def test_fast_double_backward_gives_pytorchs_on_a_resnet() -> None:
    """LPGrad swaps in the closed-form BatchNorm/Conv2d double backwards; every gradient equals PyTorch's (float64)."""
    import timm

    import losslab.models  # noqa: F401 - registers cifar_resnet20

    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20").double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    names = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    results = []
    for fast in (False, True):
        model.load_state_dict(state)
        reg = create("lp_grad", p=2, lam=0.5, activation_names=names, fast_double_backward=fast)
        reg.attach(model)
        swapped = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and "forward" in m.__dict__]
        assert len(swapped) == (19 if fast else 0)
        swapped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and "forward" in m.__dict__]
        assert len(swapped) == (19 if fast else 0)
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (loss.detach() + reg.fused_loss_term(model, loss, 4)).backward()
        reg.detach()
        assert not any("forward" in m.__dict__ for m in model.modules())
        results.append(([p.grad.clone() for p in model.parameters()], model.state_dict()))
    (slow_grads, slow_state), (fast_grads, fast_state) = results
    for a, b in zip(slow_grads, fast_grads):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    for key, value in slow_state.items():  # running statistics updated identically
        torch.testing.assert_close(fast_state[key], value, rtol=0, atol=0, msg=key)


def test_layer_swap_follows_the_active_flag() -> None:
    """Unregularized epochs (set_active(False)) run the modules' own forward; attach while inactive swaps nothing."""
    model = TinyNet()
    swapped = lambda: [n for n, m in model.named_modules() if "forward" in m.__dict__]  # noqa: E731
    reg = create("lp_grad", p=2, lam=0.1)
    reg.set_active(False)
    reg.attach(model)
    assert swapped() == []
    reg.set_active(True)
    assert swapped() == ["conv", "bn"]
    reg.set_active(False)
    assert swapped() == []
    reg.set_active(True)
    reg.detach()
    assert swapped() == []
    reg.set_active(True)  # after detach there is no model to swap
    assert swapped() == []
