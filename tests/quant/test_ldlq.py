"""LDLQ oracles (quantization spec §7, §11): H = UDUᵀ, LDLQ ≡ GPTQ, the proxy identity, ldlqRG passes."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.gptq import gptq_weight, hessian_from_inputs
from losslab.quant.layer_metrics import proxy_loss
from losslab.quant.ldlq import ldl_decompose, ldlq_weight

F64 = torch.float64


def _problem(seed: int = 0, out: int = 24, d: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, d, generator=g, dtype=F64), hessian_from_inputs(torch.randn(200, d, generator=g, dtype=F64))


def test_ldl_decompose_reconstructs() -> None:
    _, h = _problem()
    u, d = ldl_decompose(h)
    assert torch.equal(torch.diagonal(u), torch.ones(40, dtype=F64))
    assert torch.equal(u, torch.triu(u))
    assert torch.allclose(u @ torch.diag(d) @ u.T, h, atol=1e-12)


@pytest.mark.parametrize(("order", "act_order"), [("natural", False), ("act", True)])
@pytest.mark.parametrize("grid", ["asym", "sym", "quip"])
def test_ldlq_equals_gptq(order: str, act_order: bool, grid: str) -> None:
    for seed in range(3):
        w, h = _problem(seed)
        a = ldlq_weight(w, h, 3, grid=grid, order=order)
        b = gptq_weight(w, h, 3, grid=grid, act_order=act_order)
        assert torch.equal(a.codes, b.codes)


@pytest.mark.parametrize("order", ["natural", "act", "ldlqRG"])
def test_proxy_identity(order: str) -> None:
    w, h = _problem(4)
    wq = ldlq_weight(w, h, 2, order=order)
    h_damped = h + wq.extras["damp"] * torch.eye(40, dtype=F64)
    terms = (wq.extras["ldl_d"] * wq.extras["arg_residual_sq"]).sum().item()
    assert terms == pytest.approx(proxy_loss(w, wq.q, h_damped), rel=1e-10)


def test_ldlqrg_greedy_passes_never_increase_proxy() -> None:
    w, h = _problem(5)
    base = ldlq_weight(w, h, 2, grid="quip", order="ldlqRG")
    passed = ldlq_weight(w, h, 2, grid="quip", order="ldlqRG", npasses=10)
    h_damped = h + base.extras["damp"] * torch.eye(40, dtype=F64)
    assert proxy_loss(w, passed.q, h_damped) <= proxy_loss(w, base.q, h_damped) + 1e-12
    assert 1 <= passed.extras["passes_run"] <= 10
    assert torch.equal(passed.dequantize(), passed.q)
    order = torch.argsort(torch.diagonal(h), stable=True).flip(0)
    assert torch.equal(passed.extras["perm"], order)


def test_bad_order_and_npasses() -> None:
    w, h = _problem()
    with pytest.raises(ConfigError, match="order"):
        ldlq_weight(w, h, 3, order="random")
    with pytest.raises(ConfigError, match="npasses"):
        ldlq_weight(w, h, 3, order="natural", npasses=2)
