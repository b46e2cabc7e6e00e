"""GPFQ oracles (quantization spec §5, §11): Sigma-Delta for m = 1, RTN for orthogonal columns, zero columns,
Gram form = sample form (arguments, codes, blocked or not), fp32 teacher forcing, residual, greedy argmin."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.gpfq import (
    GPFQStats,
    gpfq_alphabet,
    gpfq_gram_codes,
    gpfq_sample_codes,
    gpfq_weight,
    gpfq_weight_from_stats,
    gpfq_weight_sample_form,
)
from losslab.quant.rtn import rtn_weight

F64 = torch.float64


def _pair(m: int, n: int = 64, d: int = 50, dtype: torch.dtype = F64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=dtype)
    xt = x + 0.1 * torch.randn(m, d, generator=g, dtype=dtype)
    w = torch.randn(n, d, generator=g, dtype=dtype)
    return w, x, xt


def _gram(x: torch.Tensor, xt: torch.Tensor, dtype: torch.dtype = F64):
    stats = GPFQStats(x.shape[1], dtype=dtype)
    stats.update(x, xt)
    return stats.finalize()


def test_m1_is_first_order_sigma_delta() -> None:
    w = torch.rand(6, 200, dtype=F64) - 0.5
    x = torch.ones(1, 200, dtype=F64)
    wq = gpfq_weight(w, x, bits=3, scalar=2.0)  # radius 2·rad: no clipping
    delta = wq.extras["delta"]
    state = torch.zeros(6, dtype=F64)
    for t in range(200):
        expected = delta * torch.clamp(torch.floor((w[:, t] + state) / delta + 0.5), -4, 4)
        assert torch.equal(wq.q[:, t], expected)
        state = state + w[:, t] - wq.q[:, t]
        assert (state.abs() <= delta / 2 + 1e-12).all()


def test_orthogonal_columns_equal_rtn_on_the_alphabet() -> None:
    q, _ = torch.linalg.qr(torch.randn(300, 40, dtype=F64))
    x = q * (torch.rand(40, dtype=F64) + 0.5)
    w = torch.randn(16, 40, dtype=F64)
    got = gpfq_weight(w, x, bits=4)
    want = rtn_weight(w, 4, grid="gpfq", scalar=1.16)
    assert torch.equal(got.codes, want.codes)


def test_zero_column_gives_zero() -> None:
    w, x, xt = _pair(100)
    x[:, 7] = 0
    xt[:, 7] = 0
    for wq in (gpfq_weight(w, x, xt, bits=3), gpfq_weight_sample_form(w, x, xt, bits=3)):
        assert (wq.q[:, 7] == 0).all()


@pytest.mark.parametrize("m", [20, 500])
@pytest.mark.parametrize("blocksize", [128, 7, 1])
def test_gram_form_equals_sample_form_float64(m: int, blocksize: int) -> None:
    w, x, xt = _pair(m)
    alphabet = gpfq_alphabet(w, 3)
    codes_s, args_s, _ = gpfq_sample_codes(w, x, xt, alphabet)
    codes_g, args_g = gpfq_gram_codes(w, _gram(x, xt), alphabet, blocksize=blocksize)
    assert torch.equal(codes_g, codes_s)
    assert ((args_g - args_s).abs() <= 1e-10 * args_s.abs().max()).all()


def test_fp32_teacher_forcing_within_1e4_delta() -> None:
    w, x, xt = _pair(500, dtype=torch.float32)
    alphabet = gpfq_alphabet(w, 4)
    codes_s, args_s, _ = gpfq_sample_codes(w, x, xt, alphabet)
    _, args_g = gpfq_gram_codes(w, _gram(x, xt, torch.float32), alphabet, forced_codes=codes_s)
    delta = alphabet.scale[0, 0].item()
    assert (args_g - args_s).abs().max().item() <= 1e-4 * delta


@pytest.mark.parametrize("m", [20, 500])
def test_gram_residual_equals_sample_residual(m: int) -> None:
    w, x, xt = _pair(m)
    gram = gpfq_weight(w, x, xt, bits=3)
    sample = gpfq_weight_sample_form(w, x, xt, bits=3)
    _, _, u = gpfq_sample_codes(w, x, xt, gpfq_alphabet(w, 3))
    assert torch.allclose(gram.extras["residual_sq"], u.pow(2).sum(1), rtol=1e-9)
    assert gram.extras["relative_error"] == pytest.approx(sample.extras["relative_error"], rel=1e-9)
    assert gram.extras["relative_error"] == pytest.approx((u.norm() / (x @ w.T).norm()).item(), rel=1e-9)


def test_each_step_is_the_brute_force_argmin() -> None:
    w, x, xt = _pair(60, n=8, d=20)
    wq = gpfq_weight(w, x, xt, bits=2)
    delta = wq.extras["delta"]
    alphabet = delta * torch.arange(-2, 3, dtype=F64)
    u = torch.zeros(8, 60, dtype=F64)
    for t in range(20):
        target = u + w[:, t : t + 1] * x[:, t]
        dist = (target[:, None, :] - alphabet[None, :, None] * xt[:, t]).norm(dim=2)  # [rows, levels]
        chosen = dist.gather(1, wq.codes[:, t : t + 1].long() + 2)[:, 0]
        assert (chosen <= dist.min(1).values + 1e-12).all()
        u = target - wq.q[:, t : t + 1] * xt[:, t]


def test_streamed_stats_equal_one_shot() -> None:
    w, x, xt = _pair(300)
    stats = GPFQStats(50)
    for a, b in zip(x.split(64), xt.split(64)):
        stats.update(a, b)
    assert stats.count == 300
    assert torch.equal(gpfq_weight_from_stats(w, stats, bits=3).codes, gpfq_weight(w, x, xt, bits=3).codes)
    same = GPFQStats(50)
    same.update(x)
    gram = same.finalize()
    assert torch.equal(gram.g, gram.h_tilde) and torch.allclose(gram.xx, x.T @ x)


def test_stochastic_forms_agree_and_round_to_neighbours() -> None:
    w, x, xt = _pair(200)
    alphabet = gpfq_alphabet(w, 3)
    a = gpfq_gram_codes(w, _gram(x, xt), alphabet, stochastic=True, generator=torch.Generator().manual_seed(5))
    b = gpfq_sample_codes(w, x, xt, alphabet, stochastic=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])
    y = a[1] / alphabet.scale
    inside = y.abs() < 4
    assert ((a[0] - torch.floor(y))[inside].abs() <= 1).all()
    assert ((a[0] - torch.floor(y))[inside] >= 0).all()


def test_levels_labels_and_legacy_alphabet() -> None:
    w, x, _ = _pair(100)
    wq = gpfq_weight(w, x, bits=4)
    assert (wq.levels, wq.storage_bits, wq.grid) == (17, 5, "gpfq")
    assert wq.extras["label"] == "4-bit GPFQ (17 levels)"
    legacy = gpfq_weight(w, x, bits=2, legacy_alphabet=True)
    assert legacy.levels == 5 and legacy.lut is not None
    assert (legacy.lut[0] == 0).any()
    assert torch.allclose(legacy.lut[0].abs().max(), 1.16 * w.abs().amax(1).mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dequantize_bit_exact(dtype: torch.dtype) -> None:
    w, x, xt = _pair(100, dtype=torch.float32)
    for wq in (gpfq_weight(w.to(dtype), x, xt, bits=3), gpfq_weight_sample_form(w.to(dtype), x, xt, bits=3)):
        assert wq.q.dtype == dtype and torch.equal(wq.dequantize(), wq.q)


def test_bad_arguments_raise() -> None:
    w, x, _ = _pair(10)
    with pytest.raises(ConfigError, match="bits"):
        gpfq_weight(w, x, bits=1)
    with pytest.raises(ConfigError, match="scalar"):
        gpfq_weight(w, x, bits=3, scalar=0)
    with pytest.raises(ConfigError, match="stochastic"):
        gpfq_weight(w, x, bits=3, stochastic=True, legacy_alphabet=True)
    with pytest.raises(ValueError, match="x_tilde"):
        GPFQStats(50).update(x, x[:5])
