"""MSE-optimal range clipping for uniform grids (quantization spec §3).

Per row try α ∈ {1, 0.99, …, 0.21} on the shrunk range [α·lo, α·hi], rebuild the grid, and keep the α that
minimises Σ_j |Q(w_j) − w_j|^p. p = 2 is the default; p = 2.4 reproduces GPTQ's ``mse`` option. α = 1 is a
candidate and ties keep the earlier (larger) α, so the error never exceeds plain min–max fitting.

>>> import torch
>>> from losslab.quant.grids import grid_from_range
>>> x = torch.randn(3, 64)
>>> lo, hi = x.amin(1).clamp(max=0), x.amax(1).clamp(min=0)
>>> alpha = mse_clip_alpha(x, lo, hi, lambda a, b: grid_from_range(a, b, 4, "asym"))
>>> alpha.shape
torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from losslab.errors import check_range

if TYPE_CHECKING:
    from losslab.quant.grids import UniformGrid

__all__ = ["MSE_ALPHAS", "mse_clip_alpha"]

MSE_ALPHAS: tuple[float, ...] = tuple(1 - i / 100 for i in range(80))
"""Shrink factors tried by the search: 1, 0.99, …, 0.21 (GPTQ's grid = 100, maxshrink = 0.8)."""


def mse_clip_alpha(
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    make_grid: Callable[[Tensor, Tensor], UniformGrid],
    norm: float = 2.0,
    alphas: tuple[float, ...] = MSE_ALPHAS,
) -> Tensor:
    """Best shrink factor per row: ``argmin_α Σ_j |Q_α(x_j) − x_j|^norm`` (first α wins ties).

    Args:
        x: values ``[rows, cols]``.
        lo, hi: per-row range ``[rows]`` before shrinking.
        make_grid: builds a per-row grid (params ``[rows, 1]``) from a shrunk range ``(α·lo, α·hi)``.
        norm: error exponent p (2 = squared error, 2.4 = GPTQ's ``mse``).
        alphas: candidate shrink factors, tried in order.

    Returns:
        α per row, ``[rows]``, in ``x``'s dtype.
    """
    check_range("mse_norm", norm, low=0, low_inclusive=False)
    best_err = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    best_alpha = torch.ones_like(best_err)
    for alpha in alphas:
        grid = make_grid(alpha * lo, alpha * hi)
        err = (grid.quantize(x) - x).abs_().pow_(norm).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_alpha = torch.where(better, torch.full_like(best_alpha, alpha), best_alpha)
    return best_alpha
