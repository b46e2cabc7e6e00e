"""The registry, weight selection and the Regularizer contract shared by all regularizers (regularizers.md §0)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError
from losslab.regularizers import REGULARIZERS, Regularizer, create, list_regularizers, weight_tensors

EXPECTED = ["frobenius_decay", "inverse_std", "inverse_variance", "l1grad", "l2grad", "lp_grad", "std", "variance"]


class Net(nn.Module):
    """Conv -> BN -> ReLU -> pool -> Linear, with activation_names for LPGrad."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        self.activation_names = ["relu"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_names_and_aliases() -> None:
    assert list_regularizers() == EXPECTED
    for alias, name in [("LPGrad", "lp_grad"), ("fd", "frobenius_decay"), ("Variance-Norm", "variance")]:
        assert REGULARIZERS.resolve(alias) == name


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown regularizer 'l3norm'; choose one of: frobenius_decay, inverse_std"):
        create("l3norm", lam=1.0)


def test_default_weight_selector_takes_conv_and_linear_weights_in_module_order() -> None:
    net = Net()
    assert [id(w) for w in weight_tensors(net)] == [id(net.conv.weight), id(net.fc.weight)]
    assert [id(w) for w in weight_tensors(net, lambda m: isinstance(m, nn.Linear))] == [id(net.fc.weight)]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lp_grad", {"p": 2, "lam": 0.1}),
        ("l1grad", {"lam": 0.1, "activations": False}),
        ("variance", {"lam": 0.1}),
        ("std", {"lam": 0.1}),
        ("inverse_variance", {"lam": 0.1}),
        ("inverse_std", {"lam": 0.1}),
    ],
)
def test_loss_terms_are_scalars_in_the_graph_and_reach_the_weights(name: str, kwargs: dict) -> None:
    net = Net()
    reg = create(name, **kwargs)
    assert isinstance(reg, Regularizer) and reg.no_weight_decay_params(net) == [] and reg.grad_term(net) is None
    reg.attach(net)
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    loss = F.cross_entropy(net(x), y)
    r = reg.loss_term(net, loss, 4)
    assert r.dim() == 0 and r.requires_grad and r.item() > 0
    (g_conv,) = torch.autograd.grad(r, [net.conv.weight])
    assert g_conv.abs().sum() > 0
    reg.detach()


def test_zero_lambda_is_allowed_and_gives_zero() -> None:
    net = Net()
    loss = F.cross_entropy(net(torch.randn(2, 3, 4, 4)), torch.tensor([0, 1]))
    assert create("variance", lam=0.0).loss_term(net, loss, 2).item() == 0.0


@pytest.mark.slow
def test_regulquant_convnet_coverage() -> None:
    """§0: the ConvNet gives L = 10 weight tensors (9 convs + classifier) and 9 hooked post-ReLU activations."""
    timm = pytest.importorskip("timm")
    pytest.importorskip("losslab.models")
    model = timm.create_model("regulquant_convnet")
    weights = weight_tensors(model)
    assert len(weights) == 10 and weights[-1] is model.linear.weight
    reg = create("l2grad", lam=0.01)
    reg.attach(model)
    model(torch.randn(2, 3, 8, 8))
    captured = reg._capture.take()
    assert len(captured) == 9 and all((t >= 0).all() for t in captured)
    reg.detach()
