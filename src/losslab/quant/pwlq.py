"""PWLQ: piecewise linear quantization (Fang et al., ECCV 2020, arXiv:2002.00104; quantization spec §4).

Range [−m, m], m = max|w| per output channel (or per tensor), breakpoint p ∈ (0, m/2). Scheme ``pw2`` (the code
variant behind the paper's numbers): the centre [−p, p] gets a b-bit ``sym`` grid (values clamped to ±p first);
each tail gets a (b−1)-bit unsigned affine grid with step (m − p)/(2^(b−1) − 1) and offset p (positive tail) or
−m (negative tail); regions are chosen by strict comparison with ±p (|w| > p is a tail).

Scheme ``pw1`` (the reference code's ``pw_opt=1``, "overlapping"; optional and worse than pw2): the same centre
grid, but the tails use a b-bit ``sym`` grid on the whole range [−m, m] (step 2m/(2^b − 1), codes −2^(b−1) …
2^(b−1) − 1, so the top level is m − m/(2^b − 1) and the bottom −m·2^b/(2^b − 1)); the two ranges overlap and the
tail levels inside (−p, p) are never used. Same regions. Per region |w − q| ≤ p/(2^b − 1) (centre) and
≤ m/(2^b − 1) (tails), against (m − p)/(2^b − 2) for pw2's tails.

**Storage caveat:** both schemes have 2^(b+1) levels (pw2: 2^b + 2·2^(b−1)), like (b+1)-bit uniform. Show b-bit
PWLQ next to b-bit *and* (b+1)-bit uniform; ``storage_bits`` is b + 1. Codes index a per-row level table ``lut``
(pw2: negative tail, centre, positive tail; pw1: tail grid, centre grid), which is a function of the range m and the
breakpoint p alone (:func:`pwlq_level_table`). What is stored, and counted in bits per weight, is therefore b + 1
bits per weight plus m and p per row (per tensor with ``per_channel=False``) and, with bias correction, a shift and a
gain per row, each at the weight's float width (32 bits): 8-bit PWLQ of a 64×576 layer costs 9 + 64/576 ≈ 9.11 bits
per weight (``extras["lut_params"]``; the table is rebuilt from them when a packed file is loaded).

Breakpoint: m̃ = m/std(w) (unbiased). For a symmetric density f with CDF F, taking each piece's squared error ∝ its
step², the expected error of pw2 is ∝ (m̃ − p)² + m̃(2p − m̃)(2F(p) − 1), with derivative
∝ p − 2m̃ + 2m̃F(p) + m̃f(p)(2p − m̃); for pw1 it is ∝ p²(2F(p) − 1) + 2m̃²(1 − F(p)), derivative
∝ p(2F(p) − 1) + f(p)(p² − m̃²). The root is found by bisection (tolerance 1e-3) on (0, m̃/2); then
p = (p̃*/m̃)·m. Closed forms for pw2 (m̃ ∈ [3, 10]): Gaussian p̃* ≈ ln(0.8614·m̃ + 0.6079), Laplace
p̃* ≈ 0.8030·√m̃ − 0.3167.

>>> round(optimal_breakpoint(4.0, "gaussian"), 3), round(gaussian_breakpoint_closed_form(4.0), 3)
(1.392, 1.4)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from losslab.errors import ConfigError, check_range, unknown_name_error
from losslab.quant.blocked_solve import check_weight_matrix
from losslab.quant.grids import check_bits, grid_from_range, work_dtype
from losslab.quant.weight_quant import WeightQuant, code_dtype, storage_bits_for

__all__ = [
    "BREAKPOINT_METHODS",
    "SCHEMES",
    "gaussian_breakpoint_closed_form",
    "laplace_breakpoint_closed_form",
    "lut_param_bits",
    "optimal_breakpoint",
    "pwlq_level_table",
    "pwlq_weight",
]

BREAKPOINT_METHODS = ("gaussian", "laplace", "search")
DISTRIBUTIONS = ("gaussian", "laplace")
SCHEMES = ("pw2", "pw1")
SEARCH_STEPS = (0.1, 0.01, 0.001)


def gaussian_breakpoint_closed_form(m_tilde: float) -> float:
    """Fitted Gaussian optimum p̃* ≈ ln(0.8614·m̃ + 0.6079) (m̃ ∈ [3, 10])."""
    return math.log(0.8614 * m_tilde + 0.6079)


def laplace_breakpoint_closed_form(m_tilde: float) -> float:
    """Fitted Laplace optimum p̃* ≈ 0.8030·√m̃ − 0.3167 (m̃ ∈ [3, 10])."""
    return 0.8030 * math.sqrt(m_tilde) - 0.3167


def _cdf_pdf(p: float, dist: str) -> tuple[float, float]:
    """CDF and density at p ≥ 0 of the unit-variance standard Gaussian or Laplace distribution."""
    if dist == "gaussian":
        return 0.5 * (1 + math.erf(p / math.sqrt(2))), math.exp(-p * p / 2) / math.sqrt(2 * math.pi)
    b = 1 / math.sqrt(2)
    return 1 - 0.5 * math.exp(-p / b), math.exp(-p / b) / (2 * b)


def optimal_breakpoint(m_tilde: float, dist: str = "gaussian", tol: float = 1e-3, scheme: str = "pw2") -> float:
    """Normalized optimal breakpoint p̃* ∈ (0, m̃/2) of ``scheme`` by bisection on the derivative of its expected
    error: pw2 p − 2m̃ + 2m̃F(p) + m̃f(p)(2p − m̃); pw1 p(2F(p) − 1) + f(p)(p² − m̃²). Returns m̃/2 if the derivative
    is still negative there."""
    if dist not in DISTRIBUTIONS:
        raise ConfigError(str(unknown_name_error("dist", dist, DISTRIBUTIONS)))
    if scheme not in SCHEMES:
        raise ConfigError(str(unknown_name_error("scheme", scheme, SCHEMES)))
    check_range("m_tilde", m_tilde, low=0, low_inclusive=False)

    def derivative(p: float) -> float:
        cdf, pdf = _cdf_pdf(p, dist)
        if scheme == "pw1":
            return p * (2 * cdf - 1) + pdf * (p * p - m_tilde * m_tilde)
        return p - 2 * m_tilde + 2 * m_tilde * cdf + m_tilde * pdf * (2 * p - m_tilde)

    lo, hi = 0.0, m_tilde / 2
    if derivative(hi) <= 0:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if derivative(mid) > 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _centre_levels(p: Tensor, bits: int) -> Tensor:
    """The b-bit ``sym`` centre grid on [−p, p] per row: ``[rows, 2^b]`` levels."""
    half = 2 ** (bits - 1)
    c = torch.arange(-half, half, dtype=p.dtype, device=p.device)
    return grid_from_range(-p, p, bits, "sym").decode(c[None, :])


def _centre_codes(w: Tensor, p: Tensor, bits: int) -> Tensor:
    """Codes 0…2^b − 1 of clamp(w, −p, p) on the centre grid (per row)."""
    grid = grid_from_range(-p, p, bits, "sym")
    return grid.encode(torch.minimum(torch.maximum(w, -p[:, None]), p[:, None])) + 2 ** (bits - 1)


def _pw2_levels(m: Tensor, p: Tensor, bits: int) -> Tensor:
    """pw2's ``[rows, 2^(b+1)]`` level table from m, p ``[rows]``: negative tail (offset −m), centre, positive tail
    (offset p); tail step (m − p)/(2^(b−1) − 1)."""
    half = 2 ** (bits - 1)
    m_, p_ = m[:, None], p[:, None]
    tail_step = (m_ - p_) / (half - 1)
    j = torch.arange(half, dtype=m.dtype, device=m.device)
    return torch.cat([-m_ + tail_step * j, _centre_levels(p, bits), p_ + tail_step * j], 1)


def _pw1_levels(m: Tensor, p: Tensor, bits: int) -> Tensor:
    """pw1's ``[rows, 2^(b+1)]`` level table: the b-bit ``sym`` grid on [−m, m], then the centre grid on [−p, p]."""
    half = 2 ** (bits - 1)
    c = torch.arange(-half, half, dtype=m.dtype, device=m.device)
    return torch.cat([grid_from_range(-m, m, bits, "sym").decode(c[None, :]), _centre_levels(p, bits)], 1)


def _pw2_quantize(w: Tensor, m: Tensor, p: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """pw2 codes for ``w`` ``[rows, cols]`` (per-row m, p ``[rows]``) and the level table of :func:`_pw2_levels`."""
    half = 2 ** (bits - 1)
    m_, p_ = m[:, None], p[:, None]
    tail_step = (m_ - p_) / (half - 1)
    pos_codes = torch.round((w - p_) / tail_step).clamp_(0, half - 1) + 3 * half
    neg_codes = torch.round((w + m_) / tail_step).clamp_(0, half - 1)
    codes = torch.where(w > p_, pos_codes, torch.where(w < -p_, neg_codes, _centre_codes(w, p, bits) + half))
    return codes.long(), _pw2_levels(m, p, bits)


def _pw1_quantize(w: Tensor, m: Tensor, p: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """pw1 codes (tail grid codes 0…2^b − 1 for |w| > p, centre codes 2^b…2^(b+1) − 1 for |w| ≤ p) and the level
    table of :func:`_pw1_levels`."""
    half = 2 ** (bits - 1)
    tail_codes = grid_from_range(-m, m, bits, "sym").encode(w) + half
    codes = torch.where(w.abs() > p[:, None], tail_codes, _centre_codes(w, p, bits) + 2 * half)
    return codes.long(), _pw1_levels(m, p, bits)


_LEVELS = {"pw2": _pw2_levels, "pw1": _pw1_levels}


def lut_param_bits(params: dict[str, Any]) -> int:
    """Bits the level table's defining parameters take as stored: every tensor in ``params`` at its dtype's width
    (m and p per row or per tensor; shift and gain per row with bias correction)."""
    return sum(int(v.numel()) * v.element_size() * 8 for v in params.values() if isinstance(v, Tensor))


def pwlq_level_table(params: dict[str, Any], rows: int) -> Tensor:
    """The ``[rows, 2^(b+1)]`` level table that PWLQ's stored parameters define (what a packed file rebuilds).

    ``params`` (``extras["lut_params"]`` of a PWLQ :class:`WeightQuant`): ``scheme``, ``bits``, ``m`` and ``p``
    (``[rows]``, or ``[1]`` per tensor), and with bias correction ``shift`` and ``gain`` ``[rows, 1]``:
    levels ← (levels + shift)·gain.
    """
    m, p = params["m"].expand(rows), params["p"].expand(rows)
    lut = _LEVELS[params["scheme"]](m, p, params["bits"])
    if "shift" in params:
        lut = (lut + params["shift"]) * params["gain"]
    return lut


_QUANTIZERS = {"pw2": _pw2_quantize, "pw1": _pw1_quantize}


def _search_ratio(w: Tensor, m: Tensor, bits: int, scheme: str) -> Tensor:
    """Coarse-to-fine search of r = p/m ∈ (0, 0.5) per row on the actual squared error (steps 0.1, 0.01, 0.001)."""
    best_r = torch.full_like(m, 0.25)
    best_err = torch.full_like(m, float("inf"))
    centre = torch.full_like(m, 0.25)
    span = 0.25
    for step in SEARCH_STEPS:
        n = round(2 * span / step)
        for k in range(n + 1):
            r = (centre - span + k * step).clamp(step / 10, 0.5 - step / 10)
            codes, lut = _QUANTIZERS[scheme](w, m, r * m, bits)
            err = (lut.gather(1, codes) - w).pow(2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_r = torch.where(better, r, best_r)
        centre, span = best_r, step
    return best_r


def pwlq_weight(
    weight: Tensor,
    bits: int,
    breakpoint: str | float = "gaussian",
    scheme: str = "pw2",
    per_channel: bool = True,
    bias_correction: bool = False,
) -> WeightQuant:
    """PWLQ-quantize ``weight`` ``[out, in]`` with scheme ``pw2`` (default) or ``pw1``, per output channel or tensor.

    Args:
        weight: float weight ``[out, in]`` (BN folded beforehand for the reference setting).
        bits: nominal b (2..8); the grid has 2^(b+1) levels (``storage_bits`` = b + 1).
        breakpoint: ``gaussian`` | ``laplace`` (the scheme's optimal breakpoint for that density at m̃ = m/std),
            ``search`` (coarse-to-fine on the actual error), or a float r ∈ (0, 0.5) giving p = r·m.
        scheme: ``pw2`` (non-overlapping, the paper's numbers) or ``pw1`` (overlapping; see the module doc).
        per_channel: one range/breakpoint per row; ``False`` = one per tensor (RegulQuant preset).
        bias_correction: per row q ← (q + mean(w) − mean(q))·std(w)/std(q), applied to the level table.

    Returns:
        :class:`WeightQuant` with ``lut``; ``extras``: ``breakpoint`` p ``[rows]``, ``breakpoint_ratio`` p/m,
        ``label``.
    """
    check_bits(bits)
    if scheme not in SCHEMES:
        raise ConfigError(str(unknown_name_error("scheme", scheme, SCHEMES)))
    if isinstance(breakpoint, str) and breakpoint not in BREAKPOINT_METHODS:
        raise ConfigError(str(unknown_name_error("breakpoint", breakpoint, BREAKPOINT_METHODS)))
    if not isinstance(breakpoint, str):
        check_range("breakpoint", float(breakpoint), low=0, high=0.5, low_inclusive=False, high_inclusive=False)
    check_weight_matrix(weight)
    w = weight.to(work_dtype(weight))
    rows = w.shape[0]
    x = w if per_channel else w.reshape(1, -1)
    m = x.abs().amax(1)
    m = torch.where(m > 0, m, torch.ones_like(m))
    if breakpoint == "search":
        ratio = _search_ratio(x, m, bits, scheme)
    elif isinstance(breakpoint, str):
        std = x.std(1)
        m_tilde = (m / torch.where(std > 0, std, torch.ones_like(std))).tolist()
        ratio = torch.tensor([optimal_breakpoint(mt, breakpoint, scheme=scheme) / mt for mt in m_tilde], dtype=w.dtype)
    else:
        ratio = torch.full_like(m, float(breakpoint))
    p = ratio * m
    params: dict[str, Any] = {"scheme": scheme, "bits": bits, "m": m.clone(), "p": p.clone()}  # [1] per tensor
    if not per_channel:
        m, p, ratio = m.expand(rows), p.expand(rows), ratio.expand(rows)
    codes, lut = _QUANTIZERS[scheme](w, m, p, bits)
    if bias_correction:
        q0 = lut.gather(1, codes)
        q_std = q0.std(1, keepdim=True)
        params["gain"] = w.std(1, keepdim=True) / torch.where(q_std > 0, q_std, torch.ones_like(q_std))
        params["shift"] = w.mean(1, keepdim=True) - q0.mean(1, keepdim=True)
        lut = (lut + params["shift"]) * params["gain"]
    q = lut.gather(1, codes)
    levels = 2 ** (bits + 1)
    return WeightQuant(
        q=q.to(weight.dtype),
        codes=codes.to(code_dtype(levels)),
        scale=None,
        zero=None,
        group_index=None,
        lut=lut,
        bits=bits,
        levels=levels,
        storage_bits=storage_bits_for(levels),
        grid="pwlq",
        extras={
            "breakpoint": p.clone(),
            "breakpoint_ratio": ratio.clone(),
            "scheme": scheme,
            "per_channel": per_channel,
            "bias_correction": bias_correction,
            "lut_params": params,
            "label": f"{bits}-bit PWLQ {scheme} ({levels} levels, {bits + 1} storage bits)",
        },
    )
