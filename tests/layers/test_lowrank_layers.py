"""Low-rank Linear/Conv2d/Embedding (factorized.md §1, §2, §7): formulas, both conv paths, SI exactness, collapse."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError
from losslab.layers import (
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    conv_kernel_to_matrix,
    conv_rank_for_scale,
    matrix_rank_for_scale,
    matrix_to_conv_kernel,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_linear_forward_is_x_v_ut_plus_b_and_counts() -> None:
    layer = LowRankLinear(7, 5, rank=3)
    layer.bias.data.normal_()
    x = torch.randn(4, 7, dtype=torch.float64)
    u, v, b = (t.detach().double() for t in (layer.U, layer.V, layer.bias))
    expected = (x @ v) @ u.T + b
    torch.testing.assert_close(layer.double()(x), expected)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (7 + 5) + 5
    assert layer.dense_weight().shape == (5, 7)


def test_linear_rank_rule_half_to_even_and_clamp() -> None:
    assert matrix_rank_for_scale(0.5, 5, 9) == 2  # round(2.5) = 2 (half to even)
    assert matrix_rank_for_scale(0.7, 5, 9) == 4  # round(3.5) = 4
    assert matrix_rank_for_scale(0.01, 5, 9) == 1  # original allowed 0
    assert conv_rank_for_scale(0.111, 16, 3) == 5
    assert conv_rank_for_scale(1.0, 64, 3) == 192


def test_conv_matricization_roundtrip_and_index_convention() -> None:
    k = torch.randn(4, 3, 2, 5)
    w = conv_kernel_to_matrix(k)
    assert w.shape == (4 * 2, 3 * 5)
    o, c, i, j = 3, 1, 1, 4
    assert w[o * 2 + i, c * 5 + j] == k[o, c, i, j]
    torch.testing.assert_close(matrix_to_conv_kernel(w, 4, 3, 2, 5), k)


CONV_CASES = list(itertools.product([(3, 64), (64, 64)], [1, 2], [0, 1], [0.01, 0.5, 1.0, 4.0], [False, True]))


@pytest.mark.parametrize(("channels", "stride", "padding", "scale", "with_m"), CONV_CASES)
def test_two_conv_and_one_conv_paths_agree(
    channels: tuple[int, int], stride: int, padding: int, scale: float, with_m: bool
) -> None:
    c_in, c_out = channels
    rank = conv_rank_for_scale(scale, c_out, 3)
    layer = LowRankConv2d(c_in, c_out, 3, rank, stride=stride, padding=padding, square=with_m, m_noise=0.3)
    layer.bias.data.normal_()
    x = torch.randn(1, c_in, 7, 7)
    two = layer(x)
    layer.path = "one_conv"
    one = layer(x)
    assert rel_err(two, one) < 1e-5
    reference = F.conv2d(x.double(), layer.dense_weight().double(), layer.bias.double(), stride, padding)
    assert rel_err(one.double(), reference) < 1e-5
    assert (
        sum(p.numel() for p in layer.parameters()) == rank * (3 * c_out + 3 * c_in) + (rank**2 if with_m else 0) + c_out
    )


@pytest.mark.parametrize(("c_in", "c_out"), [(3, 16), (16, 16)])
def test_conv_non_square_kernel_dilation_paths_agree(c_in: int, c_out: int) -> None:
    conv = nn.Conv2d(c_in, c_out, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    layer = LowRankConv2d.from_dense(conv, rank=7, path="two_conv")
    x = torch.randn(1, c_in, 11, 12)
    two = layer(x)
    layer.path = "one_conv"
    assert rel_err(two, layer(x)) < 1e-5


@pytest.mark.parametrize(("c_in", "c_out", "path"), [(3, 32, "two_conv"), (32, 32, "two_conv"), (32, 32, "one_conv")])
def test_spectral_init_with_full_rank_reproduces_dense_output(c_in: int, c_out: int, path: str) -> None:
    conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    rank = c_out * 3  # >= rank(W_mat); for c_in = 3 this exceeds min(m, n) = 9 and exercises padding
    layer = LowRankConv2d.from_dense(conv, rank, path=path)
    x = torch.randn(1, c_in, 8, 8)
    assert rel_err(layer(x), conv(x)) < 1e-5


def test_square_m_starts_at_identity_and_keeps_dense_init() -> None:
    linear = nn.Linear(12, 8)
    layer = LowRankLinear.from_dense(linear, rank=8, square=True)
    torch.testing.assert_close(layer.M.data, torch.eye(8))
    x = torch.randn(3, 12)
    assert rel_err(layer(x), linear(x)) < 1e-5
    assert len(layer.factors()) == 3


@pytest.mark.parametrize("layer_kind", ["linear", "conv", "embedding"])
def test_to_dense_computes_same_function(layer_kind: str) -> None:
    if layer_kind == "linear":
        layer = LowRankLinear(10, 6, rank=4, square=True, m_noise=0.5)
        x = torch.randn(3, 10)
    elif layer_kind == "conv":
        layer = LowRankConv2d(5, 6, 3, rank=4, padding=1, square=True, m_noise=0.5)
        x = torch.randn(2, 5, 7, 7)
    else:
        layer = LowRankEmbedding(11, 6, rank=3, square=True, m_noise=0.5)
        x = torch.randint(0, 11, (4, 5))
    dense = layer.to_dense()
    assert type(dense) in (nn.Linear, nn.Conv2d, nn.Embedding)
    assert rel_err(dense(x), layer(x)) < 1e-5


def test_embedding_looks_up_u_then_multiplies_vt() -> None:
    emb = nn.Embedding(20, 8)
    layer = LowRankEmbedding.from_dense(emb, rank=8)
    idx = torch.tensor([[0, 5, 19]])
    assert rel_err(layer(idx), emb(idx)) < 1e-5
    expected = layer.U.detach()[idx] @ layer.V.detach().T
    torch.testing.assert_close(layer(idx).detach(), expected)


def test_bad_configurations_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="groups=2"):
        LowRankConv2d(4, 4, 3, rank=2, groups=2)
    with pytest.raises(ConfigError, match="groups=4"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=4), rank=2)
    with pytest.raises(ConfigError, match="padding_mode"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), rank=2)
    with pytest.raises(ConfigError, match="padding='same'"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 4, 3, padding="same"), rank=2)
    with pytest.raises(ConfigError, match="rank=0"):
        LowRankLinear(3, 3, rank=0)
    with pytest.raises(ConfigError, match="path"):
        LowRankConv2d(4, 4, 3, rank=2, path="three_conv")
    with pytest.raises(ConfigError, match="m_noise"):
        LowRankLinear(3, 3, rank=2, square=True, m_noise=-1.0)
