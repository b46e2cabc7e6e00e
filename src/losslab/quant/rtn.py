"""Round-to-nearest (RTN) weight quantization: every weight goes to its nearest grid level independently.

Q(w) = s·(clamp(round(w/s) + z, qmin, qmax) − z) with the grid fitted per row (default), per tensor or per group of
``group_size`` consecutive columns (quantization spec §2–§3). ``regulquant_uniform`` adds a uniform dither
u·step, u ~ U(−½, ½), before rounding (error variance step²/6), drawn from ``generator``.

>>> import torch
>>> wq = rtn_weight(torch.randn(16, 256), bits=4, group_size=128, clip="mse")
>>> wq.scale.shape, wq.levels, wq.storage_bits
(torch.Size([16, 2]), 16, 4)
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab.quant.blocked_solve import check_weight_matrix
from losslab.quant.grids import fit_weight_grid, make_weight_quant, work_dtype
from losslab.quant.weight_quant import WeightQuant

__all__ = ["rtn_weight"]


def rtn_weight(
    weight: Tensor,
    bits: int,
    grid: str = "asym",
    group_size: int | None = None,
    clip: str = "max",
    percentile: float = 99.9,
    mse_norm: float = 2.0,
    *,
    per_tensor: bool = False,
    scalar: float = 1.16,
    quantile: float = 1.0,
    generator: torch.Generator | None = None,
) -> WeightQuant:
    """Quantize ``weight`` ``[out, in]`` to the nearest level of a fitted grid.

    Args:
        weight: float weight ``[out, in]`` (convs already flattened).
        bits: 2..8.
        grid: ``asym`` | ``sym`` | ``narrow`` | ``gpfq`` | ``quip`` | ``regulquant_uniform``.
        group_size: g consecutive columns per grid (range grids only); ``None`` = one grid per row.
        clip: ``max`` | ``mse`` | ``percentile`` (range grids).
        percentile: percentile of the values (of |w| for symmetric grids) used as range with ``clip="percentile"``.
        mse_norm: exponent p of the MSE clipping search (2.4 = GPTQ's ``mse``).
        per_tensor: one range for the whole tensor.
        scalar, quantile: GPFQ alphabet δ = scalar·mean_rows(quantile_j|W_ij|)/2^(b−1).
        generator: random source of the ``regulquant_uniform`` dither (seed it for reproducibility).

    Returns:
        :class:`WeightQuant`; ``extras["clip_alpha"]`` holds the chosen MSE shrink ``[out, n_groups]``.
    """
    check_weight_matrix(weight)
    w = weight.to(work_dtype(weight))
    fitted = fit_weight_grid(
        w,
        bits,
        grid,
        group_size=group_size,
        per_tensor=per_tensor,
        clip=clip,
        percentile=percentile,
        mse_norm=mse_norm,
        scalar=scalar,
        quantile=quantile,
    )
    n_groups = fitted.grid.scale.shape[1]
    group_index = torch.arange(w.shape[1], device=w.device) // group_size if n_groups > 1 else None
    cols = fitted.grid if group_index is None else fitted.grid.columns(group_index)
    extras: dict[str, object] = {}
    x = w
    if grid == "regulquant_uniform":
        dither = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device) - 0.5
        x = w + dither * cols.scale
        extras["dither"] = "uniform(-step/2, step/2), not subtracted"
    codes = cols.encode(x)
    q = cols.decode(codes)
    if fitted.alpha is not None:
        extras["clip_alpha"] = fitted.alpha
    return make_weight_quant(weight, codes, q, fitted.grid, grid, bits, group_index, extras)
