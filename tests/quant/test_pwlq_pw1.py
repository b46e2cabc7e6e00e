"""PWLQ ``pw1`` (overlapping scheme, quantization spec §4): regions, the two b-bit symmetric grids written out
independently, per-region error bounds, its own optimal breakpoint, pw2 ≤ pw1 on Gaussian weights, config/CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from losslab.cli.quantize import build_methods
from losslab.errors import ConfigError
from losslab.quant import PWLQ, load_packed, quantize, save_packed
from losslab.quant.pwlq import optimal_breakpoint, pwlq_weight

F64 = torch.float64


def _sym(x: Tensor, amax: Tensor, bits: int) -> Tensor:
    """b-bit symmetric grid on [−amax, amax] (per row): step 2·amax/(2^b − 1), codes −2^(b−1) … 2^(b−1) − 1."""
    half = 2 ** (bits - 1)
    step = 2 * amax / (2**bits - 1)
    return step * torch.clamp(torch.round(torch.clamp(x, -amax, amax) / step), -half, half - 1)


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_regions_levels_and_error_bounds(bits: int) -> None:
    w = torch.randn(16, 512, dtype=F64)
    wq = pwlq_weight(w, bits, breakpoint=0.3, scheme="pw1")
    levels = 2 ** (bits + 1)
    assert (wq.levels, wq.storage_bits, wq.grid) == (levels, bits + 1, "pwlq")
    assert wq.extras["label"] == f"{bits}-bit PWLQ pw1 ({levels} levels, {bits + 1} storage bits)"
    assert torch.equal(wq.dequantize(), wq.q)
    m = w.abs().amax(1, keepdim=True)
    p = wq.extras["breakpoint"][:, None]
    assert torch.allclose(p, 0.3 * m, rtol=1e-12)
    tail = w.abs() > p  # tails by strict comparison; |w| ≤ p is the centre
    assert torch.equal(wq.codes.long() < 2**bits, tail)
    expected = torch.where(tail, _sym(w, m, bits), _sym(w, p, bits))
    assert torch.allclose(wq.q, expected, rtol=0, atol=1e-12)
    err = (wq.q - w).abs()
    eps = 1e-12
    assert (err[~tail] <= (p / (2**bits - 1)).expand_as(w)[~tail] + eps).all()  # half the centre step
    assert (err[tail] <= (m / (2**bits - 1)).expand_as(w)[tail] + eps).all()  # half the tail step
    codes = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=F64)
    assert torch.allclose(wq.lut, torch.cat([2 * m * codes, 2 * p * codes], 1) / (2**bits - 1), rtol=0, atol=1e-12)


def _pw1_derivative(p: float, m: float) -> float:
    """d/dp of p²(2Φ(p) − 1) + 2m²(1 − Φ(p)), halved: p(2Φ(p) − 1) + φ(p)(p² − m²)."""
    cdf = 0.5 * (1 + math.erf(p / math.sqrt(2)))
    pdf = math.exp(-p * p / 2) / math.sqrt(2 * math.pi)
    return p * (2 * cdf - 1) + pdf * (p * p - m * m)


@pytest.mark.parametrize("m_tilde", [3.0, 4.0, 8.0])
def test_pw1_breakpoint_is_the_root_of_its_error_derivative(m_tilde: float) -> None:
    p = optimal_breakpoint(m_tilde, "gaussian", scheme="pw1")
    assert 0 < p < m_tilde / 2
    assert _pw1_derivative(p - 1e-3, m_tilde) < 0 < _pw1_derivative(p + 1e-3, m_tilde)
    assert p > optimal_breakpoint(m_tilde, "gaussian")  # the overlapping tails favour a wider centre


def test_gaussian_breakpoint_uses_the_pw1_optimum() -> None:
    w = torch.randn(4, 2048, dtype=F64)
    wq = pwlq_weight(w, 4, scheme="pw1")
    m = w.abs().amax(1)
    m_tilde = (m / w.std(1)).tolist()
    want = torch.tensor([optimal_breakpoint(mt, scheme="pw1") / mt for mt in m_tilde], dtype=F64)
    assert torch.equal(wq.extras["breakpoint_ratio"], want)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("breakpoint", ["gaussian", "search"])
def test_pw2_beats_pw1_on_gaussian_weights(bits: int, breakpoint: str) -> None:
    """Spec §4: pw1 is worse. Measured pw1/pw2 MSE ratio on [32, 1024] Gaussian matrices, seeds 0–9: 1.06–1.13 at
    2 bits, 1.30–1.47 at 3 bits, 1.41–1.59 at 4 bits, so the mean error is asserted per seed."""
    for seed in range(5):
        w = torch.randn(32, 1024, dtype=F64, generator=torch.Generator().manual_seed(seed))
        err2 = (pwlq_weight(w, bits, breakpoint=breakpoint).q - w).pow(2).mean()
        err1 = (pwlq_weight(w, bits, breakpoint=breakpoint, scheme="pw1").q - w).pow(2).mean()
        assert err2 < err1


def test_search_and_bias_correction_with_pw1() -> None:
    w = torch.randn(4, 256, dtype=F64) * 0.1 + 0.01
    err = (pwlq_weight(w, 3, breakpoint="search", scheme="pw1").q - w).pow(2).sum(1)
    for r in (0.1, 0.2, 0.3, 0.4):
        assert (err <= (pwlq_weight(w, 3, breakpoint=r, scheme="pw1").q - w).pow(2).sum(1) + 1e-12).all()
    plain = pwlq_weight(w, 3, scheme="pw1")
    corrected = pwlq_weight(w, 3, scheme="pw1", bias_correction=True)
    assert torch.equal(corrected.codes, plain.codes)
    assert torch.allclose(corrected.q.std(1), w.std(1), rtol=1e-10)
    assert torch.equal(corrected.dequantize(), corrected.q)


def test_config_and_cli() -> None:
    assert PWLQ(bits=3, scheme="pw1").describe() == "PWLQ(bits=3, scheme='pw1')"
    w = torch.randn(8, 64)
    assert torch.equal(PWLQ(bits=3, scheme="pw1").quantize_layer(w, None).q, pwlq_weight(w, 3, scheme="pw1").q)
    (method,) = build_methods(("pwlq",), [4], {"scheme": "pw1"})
    assert method == PWLQ(bits=4, scheme="pw1")
    with pytest.raises(ConfigError, match="scheme"):
        PWLQ(bits=3, scheme="pw3")
    with pytest.raises(ConfigError, match="scheme"):
        pwlq_weight(w, 3, scheme="pw3")
    with pytest.raises(ConfigError, match="--scheme applies to pwlq"):
        build_methods(("gpfq",), [4], {"scheme": "pw1"})


def test_packed_equals_fake_bit_exactly(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    result = quantize(model, PWLQ(bits=3, scheme="pw1"), [torch.randn(8, 12)], progress=False)
    assert all(layer.grid == "pwlq" for layer in result.layers)
    save_packed(result, tmp_path / "m.safetensors")
    loaded = load_packed(
        tmp_path / "m.safetensors", model=nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    )
    fake = result.model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, fake[key]), key
