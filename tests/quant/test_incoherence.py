"""Incoherence oracles (quantization spec §7, §11): orthogonality, the rotated product, round trip, proxy and
rescaled-product invariance, outlier spreading, exact rebuild of q from codes and seeds."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.gptq import gptq_weight, hessian_from_inputs
from losslab.quant.incoherence import butterfly_factors, incoherence_quantize, random_orthogonal, unrotate
from losslab.quant.layer_metrics import proxy_loss
from losslab.quant.ldlq import ldlq_weight

F64 = torch.float64
TRANSFORMS = ["hadamard", "kron", "butterfly"]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("n", [7, 16, 24, 96])
def test_orthogonal_and_deterministic(transform: str, n: int) -> None:
    u = random_orthogonal(n, transform, seed=3)
    assert torch.allclose(u @ u.T, torch.eye(n, dtype=F64), atol=1e-5)
    assert torch.equal(u, random_orthogonal(n, transform, seed=3))
    assert not torch.equal(u, random_orthogonal(n, transform, seed=4))


def test_butterfly_factors_match_quip() -> None:
    assert butterfly_factors(768) == (48, 16)


def test_pure_hadamard_for_powers_of_two() -> None:
    u = random_orthogonal(16, "hadamard", seed=0)
    assert torch.allclose(u.abs(), torch.full((16, 16), 0.25, dtype=F64))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_rotated_product_and_proxy_invariance(transform: str) -> None:
    w, x = torch.randn(24, 32, dtype=F64), torch.randn(32, dtype=F64)
    u, v = random_orthogonal(24, transform, 0), random_orthogonal(32, transform, 1)
    assert torch.allclose((u @ w @ v.T) @ (v @ x), u @ (w @ x), atol=1e-10)
    q = w + 0.1 * torch.randn(24, 32, dtype=F64)
    h = hessian_from_inputs(torch.randn(100, 32, dtype=F64))
    rot = proxy_loss(u @ w @ v.T, u @ q @ v.T, v @ h @ v.T)
    assert rot == pytest.approx(proxy_loss(w, q, h), rel=1e-10)
    r = torch.rand(32, dtype=F64) + 0.5
    assert proxy_loss(w * r, q * r, h / r[:, None] / r[None, :]) == pytest.approx(proxy_loss(w, q, h), rel=1e-10)


def test_round_trip_recovers_w() -> None:
    w = torch.randn(12, 40, dtype=F64)
    r = torch.rand(40, dtype=F64) + 0.5
    info = {"transform": "kron", "seed_u": 5, "seed_v": 6, "n_out": 12, "n_in": 40, "r": r}
    u, v = random_orthogonal(12, "kron", 5), random_orthogonal(40, "kron", 6)
    assert torch.allclose(unrotate(u @ (w * r) @ v.T, info), w, atol=1e-12)


def test_outliers_are_spread() -> None:
    w = torch.randn(64, 64, dtype=F64)
    w[3, 5] = 80.0
    u, v = random_orthogonal(64, "hadamard", 0), random_orthogonal(64, "hadamard", 1)
    ratio = lambda a: (a.abs().max() / a.pow(2).mean().sqrt()).item()  # noqa: E731
    assert ratio(u @ w @ v.T) < ratio(w) / 4


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("rescale", [True, False])
def test_quantize_rebuilds_exactly_and_helps_outliers(transform: str, rescale: bool) -> None:
    x = torch.randn(400, 32)
    h = hessian_from_inputs(x)
    w = torch.randn(16, 32)
    w[:, 4] *= 30
    quant = partial(ldlq_weight, bits=2, grid="quip")
    wq = incoherence_quantize(w, h, quant, transform=transform, seed=11, rescale=rescale)
    assert wq.q.dtype == w.dtype and torch.equal(wq.dequantize(), wq.q)
    info = wq.extras["incoherence"]
    assert (info["seed_u"], info["seed_v"], info["n_out"], info["n_in"]) == (11, 12, 16, 32)
    assert info["r"].shape == (32,)
    assert proxy_loss(w, wq.q, h) < proxy_loss(w, quant(w, h).q, h)


def test_wraps_gptq_with_groups() -> None:
    h = hessian_from_inputs(torch.randn(200, 32))
    wq = incoherence_quantize(torch.randn(8, 32), h, partial(gptq_weight, bits=4, group_size=16))
    assert wq.scale is not None and wq.scale.shape == (8, 2)
    assert torch.equal(wq.dequantize(), wq.q)


def test_bad_transform() -> None:
    with pytest.raises(ConfigError, match="transform"):
        random_orthogonal(8, "dct")
    with pytest.raises(ConfigError, match="transform"):
        incoherence_quantize(torch.randn(4, 8), torch.eye(8), partial(ldlq_weight, bits=2), transform="dct")
