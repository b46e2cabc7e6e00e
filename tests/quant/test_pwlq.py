"""PWLQ oracles (quantization spec §4): breakpoint check values and closed forms, pw2 levels and regions, error
below uniform at equal nominal bits, search, bias correction."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.pwlq import (
    gaussian_breakpoint_closed_form,
    laplace_breakpoint_closed_form,
    optimal_breakpoint,
    pwlq_weight,
)
from losslab.quant.rtn import rtn_weight


@pytest.mark.parametrize(("m_tilde", "expected"), [(4.0, 1.392), (8.0, 2.015), (10.0, 2.210)])
def test_gaussian_breakpoint_check_values(m_tilde: float, expected: float) -> None:
    assert optimal_breakpoint(m_tilde, "gaussian") == pytest.approx(expected, abs=1e-3)


def test_closed_forms() -> None:
    assert gaussian_breakpoint_closed_form(4.0) == pytest.approx(1.400, abs=1e-3)
    for m_tilde in (3.0, 5.0, 7.0, 10.0):  # the fits track the bisection on [3, 10]
        assert gaussian_breakpoint_closed_form(m_tilde) == pytest.approx(optimal_breakpoint(m_tilde), abs=0.05)
        assert laplace_breakpoint_closed_form(m_tilde) == pytest.approx(optimal_breakpoint(m_tilde, "laplace"), abs=0.1)


def test_breakpoint_is_a_root_of_the_derivative() -> None:
    m = 6.0
    p = optimal_breakpoint(m, "laplace")
    b = 1 / math.sqrt(2)

    def deriv(x: float) -> float:
        cdf, pdf = 1 - 0.5 * math.exp(-x / b), math.exp(-x / b) / (2 * b)
        return x - 2 * m + 2 * m * cdf + m * pdf * (2 * x - m)

    assert deriv(p - 1e-3) < 0 < deriv(p + 1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pwlq_beats_uniform_at_equal_nominal_bits(bits: int) -> None:
    w = torch.randn(32, 1024)
    pw = pwlq_weight(w, bits)
    uni = rtn_weight(w, bits, grid="sym")
    err_pw, err_uni = (pw.q - w).pow(2).mean(), (uni.q - w).pow(2).mean()
    assert err_pw < err_uni
    if bits >= 3:  # paper bound at the optimum: ≤ 9/16 of b-bit uniform
        assert err_pw <= 9 / 16 * err_uni


@pytest.mark.parametrize("bits", [2, 4])
def test_levels_storage_regions(bits: int) -> None:
    w = torch.randn(16, 256)
    wq = pwlq_weight(w, bits, breakpoint=0.3)
    half = 2 ** (bits - 1)
    assert (wq.levels, wq.storage_bits, wq.grid) == (2 ** (bits + 1), bits + 1, "pwlq")
    assert wq.lut is not None and wq.lut.shape == (16, 2 ** (bits + 1))
    assert torch.equal(wq.dequantize(), wq.q)
    p = wq.extras["breakpoint"][:, None]
    m = w.abs().amax(1, keepdim=True)
    assert torch.allclose(p, 0.3 * m)
    codes = wq.codes.long()
    assert ((codes >= 3 * half) == (w > p)).all()  # positive tail by strict comparison
    assert ((codes < half) == (w < -p)).all()
    assert (wq.q.abs() <= m * (1 + 1e-6)).all()


def test_search_is_no_worse_than_its_coarse_candidates() -> None:
    w = torch.randn(4, 256)
    err = (pwlq_weight(w, 3, breakpoint="search").q - w).pow(2).sum(1)
    for r in (0.1, 0.2, 0.3, 0.4):
        assert (err <= (pwlq_weight(w, 3, breakpoint=r).q - w).pow(2).sum(1) + 1e-6).all()


def test_bias_correction_formula() -> None:
    w = torch.randn(8, 512, dtype=torch.float64) * 0.1 + 0.02
    plain = pwlq_weight(w, 3)
    wq = pwlq_weight(w, 3, bias_correction=True)
    gain = w.std(1) / plain.q.std(1)  # q ← (q + mean(w) − mean(q))·std(w)/std(q)
    assert torch.allclose(wq.q.std(1), w.std(1), rtol=1e-10)
    assert torch.allclose(wq.q.mean(1), w.mean(1) * gain, rtol=1e-10)
    assert torch.equal(wq.codes, plain.codes)
    assert torch.equal(wq.dequantize(), wq.q)


def test_per_tensor_shares_one_breakpoint() -> None:
    wq = pwlq_weight(torch.randn(6, 128), 4, per_channel=False)
    assert (wq.extras["breakpoint"] == wq.extras["breakpoint"][0]).all()
    assert wq.lut is not None and (wq.lut == wq.lut[0]).all()


def test_bad_arguments() -> None:
    w = torch.randn(4, 16)
    with pytest.raises(ConfigError, match="bits"):
        pwlq_weight(w, 9)
    with pytest.raises(ConfigError, match="breakpoint"):
        pwlq_weight(w, 4, breakpoint=0.7)
    with pytest.raises(ConfigError, match="breakpoint"):
        pwlq_weight(w, 4, breakpoint="cauchy")
    with pytest.raises(ConfigError, match="scheme"):
        pwlq_weight(w, 4, scheme="pw3")
    with pytest.raises(ConfigError, match="dist"):
        optimal_breakpoint(4.0, "uniform")
