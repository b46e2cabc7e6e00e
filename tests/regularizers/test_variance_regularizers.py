"""The VarianceNorm family against regularizers.md §2: values, gradients, scaling laws, reductions, clamps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losslab.errors import ConfigError
from losslab.regularizers import create, weight_shape_stats

LEGACY_VALUES = {"variance": 2.25, "std": 1.5, "inverse_variance": 0.9, "inverse_std": 0.9486833}


def two_layer(scale: float = 1.0) -> nn.Sequential:
    """W₁ = (1, 2, 3, 4) (Var 1.25) and W₂ = (−1, 1) (Var 1), times ``scale``; biases excluded from the penalty."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(scale * torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[2].weight.copy_(scale * torch.tensor([[-1.0, 1.0]]))
        model[0].bias.fill_(100.0)
    return model


def term(name: str, model: nn.Module, lam: float = 1.0, **kwargs: object) -> torch.Tensor:
    return create(name, lam=lam, **kwargs).loss_term(model, torch.zeros(()), 1)


@pytest.mark.parametrize("name", list(LEGACY_VALUES))
@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_legacy_values(name: str, lam: float) -> None:
    assert term(name, two_layer(), lam).item() == pytest.approx(LEGACY_VALUES[name] * lam, abs=1e-6)


@pytest.mark.parametrize("alias", ["VarianceNorm", "StdDevNorm", "InverseVarianceNorm", "InverseStdDevNorm"])
def test_regulquant_aliases(alias: str) -> None:
    canonical = {"VarianceNorm": "variance", "StdDevNorm": "std"}.get(alias)
    canonical = canonical or {"InverseVarianceNorm": "inverse_variance", "InverseStdDevNorm": "inverse_std"}[alias]
    assert create(alias, lmbda=2.0).name == canonical
    assert term(alias, two_layer(), 2.0).item() == pytest.approx(2 * LEGACY_VALUES[canonical], abs=1e-6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("variance", [-0.75, -0.25, 0.25, 0.75]),
        ("inverse_variance", [0.24, 0.08, -0.08, -0.24]),
    ],
)
def test_gradients(name: str, expected: list[float]) -> None:
    model = two_layer()
    lam = 0.5
    term(name, model, lam).backward()
    torch.testing.assert_close(model[0].weight.grad.flatten(), lam * torch.tensor(expected), atol=1e-6, rtol=0)
    assert model[0].bias.grad is None


@pytest.mark.parametrize(
    ("name", "power"), [("variance", 2), ("std", 1), ("inverse_variance", -2), ("inverse_std", -1)]
)
def test_scaling_laws(name: str, power: int) -> None:
    c = 3.0
    assert term(name, two_layer(c)).item() == pytest.approx(c**power * LEGACY_VALUES[name], rel=1e-6)


@pytest.mark.parametrize(
    ("name", "reduction", "expected"),
    [
        ("variance", "mean", 1.125),
        ("std", "mean", math.sqrt(1.125)),
        ("inverse_variance", "sum", 1.8),
        ("inverse_std", "sum", math.sqrt(1.8)),
        ("variance", "sum", 2.25),
        ("inverse_variance", "mean", 0.9),
    ],
)
def test_uniform_reductions(name: str, reduction: str, expected: float) -> None:
    assert term(name, two_layer(), reduction=reduction).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", list(LEGACY_VALUES))
def test_constant_weights_stay_finite(name: str) -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False))
    nn.init.constant_(model[0].weight, 0.5)
    r = term(name, model)
    r.backward()
    assert torch.isfinite(r) and torch.isfinite(model[0].weight.grad).all()
    if name == "inverse_variance":
        assert r.item() == pytest.approx(1e12, rel=1e-6)


def test_weight_shape_stats_closed_form() -> None:
    stats = weight_shape_stats(two_layer())
    # W₁ centred = (−1.5, −0.5, 0.5, 1.5): E c⁴ = 2.5625, Var = 1.25 → kurtosis 1.64; max|w|/std = 4/√1.25.
    assert stats["kurtosis/0"] == pytest.approx(2.5625 / 1.25**2, rel=1e-12)
    assert stats["max_over_std/0"] == pytest.approx(4 / math.sqrt(1.25), rel=1e-12)
    assert stats["kurtosis/2"] == pytest.approx(1.0, rel=1e-12)
    assert stats["max_over_std/2"] == pytest.approx(1.0, rel=1e-12)
    assert sorted(stats) == ["kurtosis/0", "kurtosis/2", "max_over_std/0", "max_over_std/2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -0.1}, "lam=-0.1"),
        ({"lam": 1.0, "reduction": "max"}, "reduction='max'"),
        ({}, "exactly one of lam or"),
        ({"lam": 1.0, "p": 2}, "does not take"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create("variance", **kwargs)
