"""Spectral init (factorized.md §5) and tensor-train convs (§9): SVD oracles, padding, TT modes/ranks/counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from wrn_meta import wide_resnet

from losslab.errors import ConfigError
from losslab.layers import (
    LowRankConv2d,
    TensorTrainConv2d,
    collapse,
    count_params_factorized,
    factor_kaiming,
    factorize,
    spectral_factors,
    tensor_train_penalty,
    tt_modes,
    tt_param_count,
    tt_ranks,
    tt_svd,
)
from losslab.layers.tensor_train import tt_full


def test_svd_oracle_rank_one() -> None:
    w = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    u, v = spectral_factors(w, 1)
    sign = torch.sign(u[0, 0])
    torch.testing.assert_close(u * sign, torch.tensor([[math.sqrt(3)], [0.0], [0.0]], dtype=torch.float64))
    torch.testing.assert_close(v * sign, torch.tensor([[math.sqrt(3)], [0.0]], dtype=torch.float64))
    torch.testing.assert_close(u @ v.T, torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64))


def test_spectral_init_product_is_truncated_svd_of_initial_conv_weight() -> None:
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    layer = LowRankConv2d.from_dense(conv, rank=11)
    w_mat = conv.weight.detach().permute(0, 2, 1, 3).reshape(96, 48).double()
    a, s, bh = torch.linalg.svd(w_mat, full_matrices=False)
    truncated = (a[:, :11] * s[:11]) @ bh[:11]
    torch.testing.assert_close(layer.weight_matrix().detach().double(), truncated, atol=1e-5, rtol=1e-5)
    u, v = layer.U.detach().double(), layer.V.detach().double()
    torch.testing.assert_close(u.T @ u, torch.diag(s[:11]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v.T @ v, torch.diag(s[:11]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad", ["zero_u", "zero"])
def test_padding_above_min_dimension(pad: str) -> None:
    w = torch.randn(6, 4, dtype=torch.float64)
    u, v = spectral_factors(w, 7, pad=pad)
    torch.testing.assert_close(u @ v.T, w)
    assert torch.all(u[:, 4:] == 0)
    grad_product = torch.randn(6, 4, dtype=torch.float64)  # dL/dW; dL/dU = G V, dL/dV = Gᵀ U
    grad_u_extra = (grad_product @ v)[:, 4:]
    if pad == "zero":
        assert torch.all(v[:, 4:] == 0) and torch.all(grad_u_extra == 0)
    else:
        rms_existing = v[:, :4].pow(2).mean().sqrt()
        assert grad_u_extra.abs().sum() > 0
        assert 0.2 * rms_existing < v[:, 4:].pow(2).mean().sqrt() < 5 * rms_existing


def test_factor_kaiming_variances() -> None:
    u, v = factor_kaiming(400, 576, 64, torch.empty(0))
    assert abs(u.var().item() / (2 / 64) - 1) < 0.05
    assert abs(v.var().item() / (2 / 576) - 1) < 0.05


def test_bad_pad_raises() -> None:
    with pytest.raises(ConfigError, match="pad='ones'"):
        spectral_factors(torch.randn(3, 3), 2, pad="ones")


@pytest.mark.parametrize(
    ("c_out", "c_in", "modes", "ranks", "params"),
    [
        (640, 640, [80, 80, 64], [19, 15], 25_280),
        (160, 160, [32, 32, 25], [7, 6], 1_718),
        (16, 160, [16, 16, 10], [4, 2], 212),
    ],
)
def test_tt_modes_ranks_params_table(c_out: int, c_in: int, modes: list[int], ranks: list[int], params: int) -> None:
    assert tt_modes(c_out, c_in) == modes
    assert tt_ranks(modes, 0.234) == ranks
    assert tt_param_count(modes, ranks) == params


def test_tt_modes_perfect_cube_and_640_conv_depthwise_count() -> None:
    assert tt_modes(64, 1000) == [40, 40, 40]
    with torch.device("meta"):
        layer = TensorTrainConv2d(640, 640, 3, 0.234, padding=1, bias=False)
    assert sum(p.numel() for p in layer.parameters()) == 25_280 + 5_760


def test_tt_wrn_counts() -> None:
    with torch.device("meta"):
        model = wide_resnet()
    assert sum(p.numel() for p in model.parameters()) == 36_479_194
    assert count_params_factorized(model, 0.234, tensor_train=True) == 607_160
    assert count_params_factorized(model, 0.705, tensor_train=True) == 2_434_702


@pytest.mark.parametrize("balanced", [False, True])
def test_tt_svd_full_rank_is_exact_and_truncation_has_ranks(balanced: bool) -> None:
    t = torch.randn(4, 5, 3, dtype=torch.float64)
    cores = tt_svd(t, [4, 3], balanced=balanced)
    torch.testing.assert_close(tt_full(cores), t)
    assert [tuple(c.shape) for c in tt_svd(t, [2, 2])] == [(1, 4, 2), (2, 5, 2), (2, 3, 1)]


def test_tt_conv_collapse_and_penalty_reaches_cores() -> None:
    conv = nn.Conv2d(10, 16, 3, stride=2, padding=1)
    layer = TensorTrainConv2d.from_dense(conv, 1.0, spectral=True)
    x = torch.randn(2, 10, 7, 7)
    dense = collapse(layer)
    assert isinstance(dense, nn.Conv2d)
    assert ((dense(x) - layer(x)).norm() / layer(x).norm()).item() < 1e-5
    model = nn.Sequential(layer)
    penalty = tensor_train_penalty(model, lam=0.2)
    torch.testing.assert_close(penalty, 0.1 * layer.pointwise_weight().pow(2).sum())
    penalty.backward()  # FD before backward: the cores get gradients (the original's post-backward add was a no-op)
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.cores)


def test_factorize_tensor_train_replaces_kxk_convs_only() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.Linear(16, 2))
    report = factorize(model, rank_scale=0.5, tensor_train=True)
    assert isinstance(model[1], TensorTrainConv2d)
    assert isinstance(model[2], nn.Conv2d) and "k×k" in report.skipped["2"]
    assert report.params_after == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="rank_scale"):
        factorize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)), rank_scale=2.0, tensor_train=True)
