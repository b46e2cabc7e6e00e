"""Quantization grids (quantization spec §2): fit a grid to weights, encode values to integer codes, decode back.

Grids (b = bits, 2 ≤ b ≤ 8):

- ``asym``: per row/group lo = min(0, min w), hi = max(0, max w) ([−1, 1] if both are 0);
  s = (hi − lo)/(2^b − 1), z = round(−lo/s), Q(w) = s·(clamp(round(w/s) + z, 0, 2^b − 1) − z). 2^b levels.
- ``sym``: s = 2·max|w|/(2^b − 1), codes −2^(b−1) … 2^(b−1) − 1. 2^b levels.
- ``narrow``: s = max|w|/(2^(b−1) − 1), codes ±(2^(b−1) − 1). 2^b − 1 levels.
- ``gpfq``: δ·{−K, …, K}, K = 2^(b−1), δ = C·rad/K, rad = mean over rows of the p-quantile of |W_i·| (p = 1: max).
  **2^b + 1 levels** ("b-bit GPFQ (2^b+1 levels)", b + 1 storage bits). Rounds half up: ⌊x/δ + ½⌋.
- ``quip``: 2^b mid-rise levels s·(2i/(2^b − 1) − 1), s = 2.4·RMS(W) per matrix; 0 is not a level.
- ``regulquant_uniform``: 2^b mid-rise levels spanning ±max|w| per tensor (dithering is applied by the caller).

Range grids (asym, sym, narrow) fit per tensor, per row or per group of g consecutive columns, with the range from
the min/max, a percentile, or the MSE-optimal shrink search (:mod:`losslab.quant.clipping`). Rounding is half to
even (``torch.round``) unless a grid says otherwise.

>>> import torch
>>> w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
>>> grid = fit_grid(w, bits=2, grid="asym").grid
>>> grid.quantize(w)
tensor([[-1.,  0.,  0.,  2.]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from losslab.errors import ConfigError, unknown_name_error
from losslab.quant.clipping import mse_clip_alpha
from losslab.quant.weight_quant import WeightQuant, code_dtype, storage_bits_for

__all__ = [
    "CLIP_METHODS",
    "GRID_NAMES",
    "RANGE_GRIDS",
    "FittedGrid",
    "LevelGrid",
    "UniformGrid",
    "check_bits",
    "check_grid",
    "fit_grid",
    "fit_weight_grid",
    "gpfq_radius",
    "grid_from_range",
    "grid_levels",
    "make_weight_quant",
    "transposed_grid",
    "work_dtype",
]

RANGE_GRIDS = ("asym", "sym", "narrow")
TENSOR_GRIDS = ("gpfq", "quip", "regulquant_uniform")
GRID_NAMES = RANGE_GRIDS + TENSOR_GRIDS
CLIP_METHODS = ("max", "mse", "percentile")
QUIP_RMS_FACTOR = 2.4


def check_bits(bits: int, key: str = "bits") -> None:
    """Raise :class:`ConfigError` unless ``bits`` is an integer in 2..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"{key}={bits!r} is not allowed: use an integer from 2 to 8")


def check_grid(grid: str, allowed: tuple[str, ...] = GRID_NAMES) -> None:
    """Raise :class:`ConfigError` for a grid name outside ``allowed``."""
    if grid not in allowed:
        raise ConfigError(str(unknown_name_error("grid", grid, allowed)))


def grid_levels(grid: str, bits: int) -> int:
    """Representable levels: 2^b, 2^b − 1 (narrow) or 2^b + 1 (gpfq)."""
    check_grid(grid)
    if grid == "narrow":
        return 2**bits - 1
    if grid == "gpfq":
        return 2**bits + 1
    return 2**bits


def work_dtype(t: Tensor) -> torch.dtype:
    """Arithmetic dtype for quantizing ``t``: float64 stays float64, everything else runs in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class UniformGrid:
    """Equally spaced levels ``scale·(c − zero)``, integer codes c ∈ [qmin, qmax], params broadcast over rows.

    ``zero`` is an integer zero point added after rounding (asym), ``None`` (symmetric grids), or with
    ``midrise=True`` the half-integer centre (L − 1)/2 added before rounding (quip, regulquant_uniform).
    ``half_up`` rounds ⌊y + ½⌋ (GPFQ) instead of half to even.
    """

    scale: Tensor
    zero: Tensor | float | None
    qmin: int
    qmax: int
    half_up: bool = False
    midrise: bool = False

    def continuous(self, w: Tensor) -> Tensor:
        """Unrounded code-unit value of ``w`` (w/s, plus the zero point)."""
        y = w / self.scale
        return y if self.zero is None else y + self.zero

    def encode(self, w: Tensor, out: Tensor | None = None) -> Tensor:
        """Integer-valued codes (in ``w``'s float dtype) of the nearest level, clamped to [qmin, qmax].

        ``out``: write into this tensor (of the broadcast shape) instead of allocating; same arithmetic.
        """
        c = torch.div(w, self.scale, out=out) if out is not None else w / self.scale  # y = w/s
        if self.midrise:
            c.add_(self.zero).round_()  # type: ignore[arg-type]
        else:
            c.add_(0.5).floor_() if self.half_up else c.round_()
            if self.zero is not None:
                c.add_(self.zero)
        return c.clamp_(self.qmin, self.qmax)

    def decode(self, codes: Tensor, out: Tensor | None = None) -> Tensor:
        """Level values ``scale·(codes − zero)`` (into ``out`` if given)."""
        if out is None:
            return self.scale * (codes if self.zero is None else codes - self.zero)
        if self.zero is None:
            return torch.mul(codes, self.scale, out=out)
        return torch.sub(codes, self.zero, out=out).mul_(self.scale)

    def quantize(self, w: Tensor) -> Tensor:
        """Nearest level ``decode(encode(w))``."""
        return self.decode(self.encode(w))

    @property
    def levels(self) -> int:
        """Number of codes ``qmax − qmin + 1``."""
        return self.qmax - self.qmin + 1

    def with_params(self, scale: Tensor, zero: Tensor | float | None) -> UniformGrid:
        """Same grid kind with new parameters."""
        return UniformGrid(scale, zero, self.qmin, self.qmax, self.half_up, self.midrise)

    def columns(self, group_index: Tensor) -> UniformGrid:
        """Per-group params ``[rows, n_groups]`` → per-column params ``[rows, len(group_index)]``."""
        zero = self.zero[:, group_index] if isinstance(self.zero, Tensor) else self.zero
        return self.with_params(self.scale[:, group_index], zero)

    def column(self, j: int) -> UniformGrid:
        """Params of column/group ``j`` as ``[rows, 1]``."""
        zero = self.zero[:, j : j + 1] if isinstance(self.zero, Tensor) else self.zero
        return self.with_params(self.scale[:, j : j + 1], zero)


@dataclass(frozen=True)
class LevelGrid:
    """Arbitrary sorted levels shared by all rows (e.g. GPFQ's legacy alphabet); nearest level, ties go down."""

    values: Tensor

    def encode(self, w: Tensor) -> Tensor:
        """Index of the nearest level (as ``w``'s float dtype)."""
        mid = (self.values[1:] + self.values[:-1]) / 2
        return torch.searchsorted(mid, w.contiguous()).to(w.dtype)

    def decode(self, codes: Tensor) -> Tensor:
        """Level values ``values[codes]``."""
        return self.values[codes.long()]

    def quantize(self, w: Tensor) -> Tensor:
        """Nearest level."""
        return self.decode(self.encode(w))

    @property
    def levels(self) -> int:
        """Number of levels."""
        return self.values.numel()


def transposed_grid(grid: UniformGrid) -> UniformGrid:
    """Grid with params ``[rows, k]`` → ``[k, rows]`` (for column loops that run on Wᵀ)."""
    zero = grid.zero.T.contiguous() if isinstance(grid.zero, Tensor) else grid.zero
    return grid.with_params(grid.scale.T.contiguous(), zero)


def grid_from_range(lo: Tensor, hi: Tensor, bits: int, grid: str) -> UniformGrid:
    """Per-row range grid from ``lo ≤ 0 ≤ hi`` (``[rows]``) → params ``[rows, 1]`` (asym, sym, narrow; §2)."""
    maxq = 2**bits - 1
    if grid == "asym":
        both_zero = (lo == 0) & (hi == 0)
        lo = torch.where(both_zero, -torch.ones_like(lo), lo)
        hi = torch.where(both_zero, torch.ones_like(hi), hi)
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / scale)
        return UniformGrid(scale[:, None], zero[:, None], 0, maxq)
    amax = torch.maximum(-lo, hi)
    amax = torch.where(amax == 0, torch.ones_like(amax), amax)
    half = 2 ** (bits - 1)
    if grid == "sym":
        return UniformGrid((2 * amax / maxq)[:, None], None, -half, half - 1)
    return UniformGrid((amax / (half - 1))[:, None], None, -(half - 1), half - 1)


@dataclass(frozen=True)
class FittedGrid:
    """A fitted grid plus what the fit chose: ``alpha`` is the MSE shrink per row/group (``None`` if unused)."""

    grid: UniformGrid
    alpha: Tensor | None = None


def _row_range(x: Tensor, grid: str, clip: str, percentile: float) -> tuple[Tensor, Tensor]:
    """Per-row (lo, hi) with lo ≤ 0 ≤ hi; symmetric grids get (−amax, amax)."""
    if clip == "percentile":
        p = percentile / 100
        if grid == "asym":
            lo, hi = torch.quantile(x, 1 - p, dim=1), torch.quantile(x, p, dim=1)
        else:
            hi = torch.quantile(x.abs(), p, dim=1)
            lo = -hi
    elif grid == "asym":
        lo, hi = x.amin(1), x.amax(1)
    else:
        hi = x.abs().amax(1)
        lo = -hi
    return lo.clamp(max=0), hi.clamp(min=0)


def fit_grid(
    x: Tensor,
    bits: int,
    grid: str = "asym",
    *,
    clip: str = "max",
    percentile: float = 99.9,
    mse_norm: float = 2.0,
    scalar: float = 1.16,
    quantile: float = 1.0,
) -> FittedGrid:
    """Fit one grid per row of ``x`` ``[rows, cols]`` (range grids) or one per tensor broadcast to every row.

    Range grids use the min/max (``clip="max"``), the ``percentile`` of the values (of |w| for symmetric grids),
    or the MSE-optimal shrink (``clip="mse"``, exponent ``mse_norm``). Tensor grids: ``gpfq`` δ = scalar·rad/K with
    rad = mean_rows(quantile_j |x_ij|); ``quip`` s = 2.4·RMS(x); ``regulquant_uniform`` s = max|x|.
    """
    check_bits(bits)
    check_grid(grid)
    rows = x.shape[0]
    if grid in RANGE_GRIDS:
        if clip not in CLIP_METHODS:
            raise ConfigError(str(unknown_name_error("clip", clip, CLIP_METHODS)))
        lo, hi = _row_range(x, grid, clip, percentile)
        if clip != "mse":
            return FittedGrid(grid_from_range(lo, hi, bits, grid))
        alpha = mse_clip_alpha(x, lo, hi, lambda a, b: grid_from_range(a, b, bits, grid), mse_norm)
        return FittedGrid(grid_from_range(alpha * lo, alpha * hi, bits, grid), alpha[:, None])
    if clip != "max":
        raise ConfigError(f"clip={clip!r} is not supported by grid {grid!r}: use clip='max'")
    levels = 2**bits
    if grid == "gpfq":
        k = 2 ** (bits - 1)
        rad = gpfq_radius(x, quantile)
        delta = scalar * rad / k if rad > 0 else torch.ones((), dtype=x.dtype) / k
        return FittedGrid(UniformGrid(delta.expand(rows, 1).clone(), None, -k, k, half_up=True))
    s = QUIP_RMS_FACTOR * x.pow(2).mean().sqrt() if grid == "quip" else x.abs().amax()
    s = torch.where(s > 0, s, torch.ones_like(s))
    step = 2 * s / (levels - 1)
    return FittedGrid(UniformGrid(step.expand(rows, 1).clone(), (levels - 1) / 2, 0, levels - 1, midrise=True))


def gpfq_radius(x: Tensor, quantile: float = 1.0) -> Tensor:
    """GPFQ radius: mean over rows of the ``quantile`` of |x_ij| over j (``quantile=1``: mean of row maxima)."""
    if quantile >= 1:
        return x.abs().amax(1).mean()
    return torch.quantile(x.abs(), quantile, dim=1).mean()


def check_group_size(group_size: int | None) -> None:
    """Raise :class:`ConfigError` unless ``group_size`` is ``None`` or a positive integer."""
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size={group_size!r} is not allowed: use a positive integer (e.g. 128) or None")


def fit_weight_grid(
    weight: Tensor,
    bits: int,
    grid: str = "asym",
    *,
    group_size: int | None = None,
    per_tensor: bool = False,
    **fit_kwargs: Any,
) -> FittedGrid:
    """Fit a grid to ``weight`` ``[out, in]``: params ``[out, n_groups]`` (n_groups = ceil(in/g), 1 without groups).

    ``per_tensor`` fits one range to the whole tensor (range grids); tensor grids (gpfq, quip, regulquant_uniform)
    are always per tensor and take no groups.
    """
    check_bits(bits)
    check_grid(grid)
    check_group_size(group_size)
    if grid in TENSOR_GRIDS and group_size is not None:
        raise ConfigError(f"grid={grid!r} is fitted per tensor: group_size must be None, got {group_size!r}")
    if per_tensor and group_size is not None:
        raise ConfigError("per_tensor=True and group_size are exclusive: pick one granularity")
    if per_tensor and grid in RANGE_GRIDS:
        fitted = fit_grid(weight.reshape(1, -1), bits, grid, **fit_kwargs)
        g = fitted.grid
        zero = g.zero.expand(weight.shape[0], 1).clone() if isinstance(g.zero, Tensor) else g.zero
        alpha = None if fitted.alpha is None else fitted.alpha.expand(weight.shape[0], 1).clone()
        return FittedGrid(g.with_params(g.scale.expand(weight.shape[0], 1).clone(), zero), alpha)
    if group_size is None or group_size >= weight.shape[1]:
        return fit_grid(weight, bits, grid, **fit_kwargs)
    fits = [
        fit_grid(weight[:, j : j + group_size], bits, grid, **fit_kwargs) for j in range(0, weight.shape[1], group_size)
    ]
    return stack_fits(fits)


def stack_fits(fits: list[FittedGrid]) -> FittedGrid:
    """Concatenate per-group fits (each ``[rows, 1]``) into one grid with params ``[rows, n_groups]``."""
    first = fits[0].grid
    scale = torch.cat([f.grid.scale for f in fits], 1)
    zero = torch.cat([f.grid.zero for f in fits], 1) if isinstance(first.zero, Tensor) else first.zero
    alpha = None if fits[0].alpha is None else torch.cat([f.alpha for f in fits], 1)  # type: ignore[misc]
    return FittedGrid(first.with_params(scale, zero), alpha)


def make_weight_quant(
    weight: Tensor,
    codes: Tensor,
    q: Tensor,
    grid: UniformGrid | LevelGrid,
    grid_name: str,
    bits: int,
    group_index: Tensor | None = None,
    extras: dict[str, Any] | None = None,
) -> WeightQuant:
    """Package codes and a fitted grid (params ``[out, n_groups]``) as a :class:`WeightQuant`.

    Integer zero points become ``zero``; mid-rise and level grids become a per-row ``lut`` computed with the same
    arithmetic as ``q`` so that ``dequantize()`` reproduces ``q`` bit-exactly.
    """
    levels = grid.levels
    out = weight.shape[0]
    scale = zero = lut = None
    if isinstance(grid, LevelGrid):
        lut = grid.values.expand(out, levels).clone()
    elif grid.midrise:
        lut = grid.decode(torch.arange(levels, dtype=grid.scale.dtype, device=grid.scale.device)[None, :])
    else:
        scale = grid.scale.clone()
        zero = grid.zero.to(code_dtype(levels)) if isinstance(grid.zero, Tensor) else None
    return WeightQuant(
        q=q.to(weight.dtype),
        codes=codes.to(code_dtype(levels)),
        scale=scale,
        zero=zero,
        group_index=group_index,
        lut=lut,
        bits=bits,
        levels=levels,
        storage_bits=storage_bits_for(levels),
        grid=grid_name,
        extras=dict(extras or {}),
    )
