"""GPTQ / OPTQ (Frantar et al., ICLR 2023, arXiv:2210.17323): quantize columns in sequence and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian (quantization spec §6).

Steps on W ``[out, in]`` and H = (2/n)·Σ XᵀX ``[in, in]``:

1. dead columns (H_jj = 0): H_jj = 1, W[:, j] = 0;
2. optional act-order: perm = argsort(diag H, descending);
3. H += percdamp·mean(diag H)·I (if the factorization still fails the damping grows ×10, recorded in ``extras``);
4. per column i in sequence: q = 𝒬(w_i) and the rounding error fed forward to the later columns;
5. undo the permutation.

Step 4 runs as the blocked error feedback of :mod:`losslab.quant.blocked_solve` (``solver="auto"``): with
H = U·diag(D)·Uᵀ (U unit upper, one Cholesky factorization) the argument of column t is
a_t = w_t + Σ_{s<t} U_st·(w_s − q_s), which equals GPTQ's error-updated column (U = R⁻¹·diag(R) for H⁻¹ = RᵀR);
inner blocks of 16 columns with rank-1 updates, GEMMs between blocks. ``solver="loop"`` keeps the reference:
R upper triangular with H⁻¹ = RᵀR, per block of ``blocksize`` columns, per column e = (w_i − q)/R_ii,
W[:, i:] −= e ⊗ R[i, i:] (lazy: inside the block only, the rest after the block with one GEMM). Both give the same
codes in float64 (docs/quant_algorithms.md).

Groups: at every multiple of g (in processing order) the grid is fitted to the current, error-updated
W[:, i:i+g]; under act-order ``group_index`` maps each column to its group. ``static_groups`` fits all groups on
the original W in natural order first.

>>> import torch
>>> x = torch.randn(512, 64)
>>> wq = gptq_weight(torch.randn(32, 64), hessian_from_inputs(x), bits=4)
>>> wq.codes.shape
torch.Size([32, 64])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, check_range
from losslab.quant.blocked_solve import (
    DEFAULT_INNER,
    blocked_feedback,
    check_finite,
    check_gram_diagonal,
    check_rows_input,
    check_solver,
    check_weight_matrix,
    feedback_factor_or_none,
    resolve_solver,
    run_block,
)
from losslab.quant.grids import (
    RANGE_GRIDS,
    FittedGrid,
    UniformGrid,
    check_bits,
    check_grid,
    check_group_size,
    fit_grid,
    make_weight_quant,
    stack_fits,
    transposed_grid,
    work_dtype,
)
from losslab.quant.weight_quant import WeightQuant

__all__ = [
    "HessianStats",
    "check_hessian_args",
    "damped_factor",
    "fix_dead_columns",
    "gptq_weight",
    "hessian_from_inputs",
]

MAX_DAMP_RETRIES = 12


def hessian_from_inputs(x: Tensor) -> Tensor:
    """H = (2/n)·XᵀX for inputs ``x`` ``[n, in]`` (float64 stays float64, else float32)."""
    check_rows_input("x", x, finite=True)
    x = x.to(work_dtype(x))
    return (2.0 / x.shape[0]) * (x.T @ x)


@dataclass
class HessianStats:
    """Running mean H = (2/n)·Σ XᵀX over batches, as GPTQ's hooks accumulate it.

    ``update(x, count)`` takes rows ``x`` ``[rows, in]`` that stand for ``count`` calibration samples (default: the
    number of rows; pass the number of sequences/images to reproduce GPTQ's n). CPU batches with NaN/inf are refused
    at ``update``; on an accelerator the quantizers refuse the accumulated Hessian instead (no per-batch sync).

    >>> stats = HessianStats(8)
    >>> stats.update(torch.randn(100, 8)); stats.update(torch.randn(50, 8))
    >>> stats.hessian.shape, stats.count
    (torch.Size([8, 8]), 150)
    """

    dim: int
    dtype: torch.dtype = torch.float32
    device: torch.device | str | None = None
    hessian: Tensor = field(init=False)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.hessian = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)

    def update(self, x: Tensor, count: int | None = None) -> None:
        """Fold a batch of inputs ``[rows, in]`` into the running mean."""
        check_rows_input("HessianStats.update: x", x, self.dim, finite=False)
        k = x.shape[0] if count is None else count
        total = self.count + k
        xs = x.to(self.dtype)
        batch = xs.T @ xs
        check_gram_diagonal("HessianStats.update: x", x, torch.diagonal(batch))
        self.hessian.mul_(self.count / total).add_(batch, alpha=2.0 / total)
        self.count = total


def fix_dead_columns(weight: Tensor, hessian: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ's dead-column fix on copies: H_jj = 0 → H_jj = 1 and W[:, j] = 0. Returns (W, H, dead mask)."""
    w, h = weight.clone(), hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    return w, h, dead


def damped_factor(
    hessian: Tensor, percdamp: float, factor: Callable[[Tensor], Tensor | None]
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Apply H += damp·I with damp = percdamp·mean(diag H) and run ``factor``; on failure grow damp ×10 and retry.

    ``factor`` returns ``None`` when the damped H is not positive definite. Returns (factor result, damped H,
    info with the damping used and the number of retries). Raises :class:`LosslabError` after 12 retries.
    """
    mean_diag = torch.diagonal(hessian).mean().item()
    damp = percdamp * mean_diag
    for retry in range(MAX_DAMP_RETRIES + 1):
        h = hessian
        if damp > 0:  # H + damp·I: a copy with damp added to the diagonal (the same numbers as adding damp·eye)
            h = hessian.clone()
            torch.diagonal(h).add_(damp)
        result = factor(h)
        if result is not None:
            return result, h, {"damp": damp, "damp_retries": retry}
        damp = damp * 10 if damp > 0 else 1e-6 * max(mean_diag, 1e-12)
    raise LosslabError(
        f"the Hessian stayed singular after {MAX_DAMP_RETRIES} damping increases (last damp={damp:g}); "
        "check the calibration inputs for NaN/inf"
    )


def _inverse_cholesky_upper(h: Tensor) -> Tensor | None:
    """R upper triangular with H⁻¹ = RᵀR, or None if H is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        return None
    r, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if info.item() != 0 or not torch.isfinite(r).all():
        return None
    return r


def _row(grid: UniformGrid, j: int) -> UniformGrid:
    """Row ``j`` of a grid with params ``[k, rows]`` as params ``[1, rows]``."""
    zero = grid.zero[j : j + 1] if isinstance(grid.zero, Tensor) else grid.zero
    return grid.with_params(grid.scale[j : j + 1], zero)


class _ColumnGrids:
    """The grid of every processed column: one per row, static per-group grids, or per-group grids fitted on the
    error-updated columns when processing reaches a group start (``dynamic_fits``, in processing order)."""

    def __init__(
        self,
        fit: Callable[[Tensor], FittedGrid],
        group_size: int | None,
        row_fit: FittedGrid | None,
        static_fit: FittedGrid | None,
        perm: Tensor | None,
        n_in: int,
    ) -> None:
        self.fit, self.group_size, self.n_in = fit, group_size, n_in
        self.dynamic_fits: list[FittedGrid] = []
        self._static_rows: list[UniformGrid] | None = None
        self._now_1d: tuple[UniformGrid, UniformGrid] | None = None
        self.now = transposed_grid(row_fit.grid) if row_fit is not None else None  # params [1, out]
        self.per_column: UniformGrid | None = None  # static groups: params [in, out] in processing order
        if static_fit is not None and group_size is not None:
            order = perm if perm is not None else torch.arange(n_in, device=static_fit.grid.scale.device)
            self.per_column = transposed_grid(static_fit.grid.columns(order // group_size))

    def group_starts(self) -> list[int]:
        """Columns (processing order) where a dynamic group grid is fitted."""
        if self.group_size is None or self.per_column is not None:
            return []
        return list(range(0, self.n_in, self.group_size))

    def refit(self, current: Tensor) -> None:
        """Fit the next group's grid on its current columns ``current`` ``[g, out]`` (rows of Wᵀ)."""
        self.dynamic_fits.append(self.fit(current.T))
        self.now = transposed_grid(self.dynamic_fits[-1].grid)

    def at(self, col: int) -> UniformGrid:
        """Grid of column ``col`` with params ``[1, out]``."""
        return _row(self.per_column, col) if self.per_column is not None else self.now  # type: ignore[return-value]

    def block(self, b: int, e: int) -> UniformGrid:
        """Grids of columns b…e−1 with params ``[e − b, out]`` (views; a per-row grid is expanded)."""
        if self.per_column is not None:
            g = self.per_column
            return g.with_params(g.scale[b:e], g.zero[b:e] if isinstance(g.zero, Tensor) else g.zero)
        g = self.now  # type: ignore[assignment]
        n_out = g.scale.shape[1]  # type: ignore[union-attr]
        zero = g.zero.expand(e - b, n_out) if isinstance(g.zero, Tensor) else g.zero  # type: ignore[union-attr]
        return g.with_params(g.scale.expand(e - b, n_out), zero)  # type: ignore[union-attr]

    def at_1d(self, col: int) -> UniformGrid:
        """Grid of column ``col`` with params ``[out]`` (cached per grid, for the blocked solve's row steps)."""
        if self.per_column is not None:
            if self._static_rows is None:
                scale, zero = self.per_column.scale.unbind(0), self.per_column.zero
                zeros = zero.unbind(0) if isinstance(zero, Tensor) else [zero] * len(scale)
                self._static_rows = [self.per_column.with_params(s, z) for s, z in zip(scale, zeros, strict=True)]
            return self._static_rows[col]
        if self._now_1d is None or self._now_1d[0] is not self.now:
            g = self.now
            zero = g.zero[0] if isinstance(g.zero, Tensor) else g.zero  # type: ignore[union-attr]
            self._now_1d = (g, g.with_params(g.scale[0], zero))  # type: ignore[union-attr]
        return self._now_1d[1]


def _loop_solve(wt: Tensor, r: Tensor, grids: _ColumnGrids, blocksize: int) -> tuple[Tensor, Tensor]:
    """The per-column reference loop on Wᵀ ``[in, out]`` with H⁻¹ = RᵀR (in place on ``wt``): per column
    e = (w − q)/R_ii and a rank-1 update of the rest of its block, one GEMM after each block. Returns (codes, Q)ᵀ."""
    n_in, n_out = wt.shape
    starts = set(grids.group_starts())
    codes, q_all = torch.empty_like(wt), torch.empty_like(wt)
    for i1 in range(0, n_in, blocksize):
        i2 = min(i1 + blocksize, n_in)
        w1 = wt[i1:i2]
        err1 = torch.empty(i2 - i1, n_out, dtype=wt.dtype, device=wt.device)
        r1 = r[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col in starts:
                end = min(col + grids.group_size, n_in)  # type: ignore[operator]
                current = wt[col:end]
                if end > i2:  # columns past this block still miss the block's pending error
                    pending = wt[i2:end] - r[i1:col, i2:end].T @ err1[:i]
                    current = torch.cat([w1[i:], pending], 0)
                grids.refit(current)
            g = grids.at(col)
            x = w1[i : i + 1]
            c = g.encode(x)
            q = g.decode(c)
            codes[col : col + 1] = c
            q_all[col : col + 1] = q
            e = (x - q) / r1[i, i]
            err1[i : i + 1] = e
            w1[i + 1 :].sub_(r1[i, i + 1 :, None] * e)
        if i2 < n_in:
            wt[i2:].addmm_(r[i1:i2, i2:].T, err1, alpha=-1)
    return codes, q_all


def _blocked_solve(
    wt: Tensor, u: Tensor, grids: _ColumnGrids, blocksize: int, inner: int, compiled: bool = False
) -> tuple[Tensor, Tensor]:
    """GPTQ as the error feedback a_t = w_t + Σ_{s<t} U_st·(w_s − q_s) (:mod:`losslab.quant.blocked_solve`) on Wᵀ
    ``[in, out]`` with the unit upper LDL factor U of the damped H; ``compiled``: one compiled kernel per inner
    block (:func:`losslab.quant.blocked_solve.run_block`). Returns (codes, Q)ᵀ."""
    codes, q_all = torch.empty_like(wt), torch.empty_like(wt)
    c_rows, q_rows, w_rows = codes.unbind(0), q_all.unbind(0), wt.unbind(0)  # row views, made once
    group = grids.group_size or 0

    def step(t: int, a: Tensor, f: Tensor) -> None:  # a, f: [out]; grid params [out]
        g = grids.at_1d(t)
        torch.sub(w_rows[t], g.decode(g.encode(a, out=c_rows[t]), out=q_rows[t]), out=f)

    def on_break(t: int, peek: Callable[[int], Tensor]) -> None:
        # GPTQ fits a group on its columns as its loop has updated them by now: W_g + S_g·U_gg⁻¹, where
        # S_g = A_g − W_g is the feedback the group's columns got from columns < t (derivation: module docstring).
        end = min(t + group, wt.shape[0])
        s = peek(end) - wt[t:end]  # [g, out]
        grids.refit(wt[t:end] + torch.linalg.solve_triangular(u[t:end, t:end].T, s, upper=False, unitriangular=True))

    block_step = None
    if compiled:

        def block_step(b: int, e: int, a: Tensor, f: Tensor) -> None:  # a, f: [e - b, out]
            g = grids.block(b, e)
            out = run_block(a, u[b:e, b:e], wt[b:e], g.scale, g.zero, g.qmin, g.qmax, g.half_up, g.midrise)
            codes[b:e], q_all[b:e], f[:], a[:] = out

    blocked_feedback(
        wt.clone(),
        u,
        step,
        blocksize=blocksize,
        inner=inner,
        breaks=grids.group_starts(),
        on_break=on_break,
        block_step=block_step,
    )
    return codes, q_all


def check_hessian_args(weight: Tensor, hessian: Tensor, bits: int, grid: str, percdamp: float) -> None:
    """Shared validation of Hessian-based quantizers (raises before any work)."""
    check_bits(bits)
    check_grid(grid)
    check_range("percdamp", percdamp, low=0)
    check_weight_matrix(weight)
    if not isinstance(hessian, Tensor) or not hessian.is_floating_point():
        raise LosslabError("hessian must be a floating-point [in, in] tensor; build it with hessian_from_inputs(x)")
    if hessian.shape != (weight.shape[1], weight.shape[1]):
        raise LosslabError(
            f"weight must be [out, in] and hessian [in, in]; got weight {tuple(weight.shape)}, "
            f"hessian {tuple(hessian.shape)}"
        )
    check_finite("hessian", hessian, "the calibration data (and the model's activations on it)")


def gptq_weight(
    weight: Tensor,
    hessian: Tensor,
    bits: int = 4,
    blocksize: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    group_size: int | None = None,
    grid: str = "asym",
    static_groups: bool = False,
    clip: str = "max",
    *,
    mse_norm: float = 2.0,
    percentile: float = 99.9,
    scalar: float = 1.16,
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
) -> WeightQuant:
    """GPTQ-quantize ``weight`` ``[out, in]`` with Hessian ``hessian`` ``[in, in]`` (see module docstring).

    Args:
        weight: float weight ``[out, in]``.
        hessian: H = (2/n)·XᵀX (any positive semi-definite matrix; singular ones are damped further).
        bits: 2..8.
        blocksize: columns per lazy-update block (results agree for every block size up to rounding).
        percdamp: damping as a fraction of mean(diag H).
        act_order: process columns by descending diag H.
        group_size: columns per grid (range grids only); ``None`` = one grid per row fitted on the original W.
        grid: ``asym`` | ``sym`` | ``narrow`` (also ``gpfq`` / ``quip`` per tensor, without groups).
        static_groups: fit every group's grid on the original W (natural order) before quantizing.
        clip, mse_norm, percentile: range selection of the grid fits (``clip="mse", mse_norm=2.4`` = GPTQ ``mse``).
        scalar: GPFQ alphabet scalar when ``grid="gpfq"``.
        solver: ``auto`` (= ``blocked``) | ``blocked``: the two-level blocked error feedback with one Cholesky
            factorization (:mod:`losslab.quant.blocked_solve`) | ``compiled``: the same with each inner block one
            ``torch.compile`` kernel on CUDA (``blocked`` elsewhere; eager if compiling fails) | ``loop``: the
            per-column reference loop with H⁻¹ = RᵀR (Cholesky, inverse, Cholesky). Same codes in float64;
            float32 within the documented flip rate.
        inner: columns per inner block of the blocked solver.

    Returns:
        :class:`WeightQuant`; ``extras`` has ``damp``, ``damp_retries``, ``dead_columns`` and ``perm`` (act-order).
    """
    check_hessian_args(weight, hessian, bits, grid, percdamp)
    check_group_size(group_size)
    check_range("blocksize", blocksize, low=1)
    check_solver(solver, inner)
    if group_size is not None and grid not in RANGE_GRIDS:
        raise ConfigError(f"group_size needs a range grid ({', '.join(RANGE_GRIDS)}), got grid={grid!r}")
    dtype = work_dtype(weight)
    w0 = weight.to(dtype)
    n_in = w0.shape[1]

    def fit(x: Tensor) -> FittedGrid:
        return fit_grid(x, bits, grid, clip=clip, mse_norm=mse_norm, percentile=percentile, scalar=scalar)

    row_fit = fit(w0) if group_size is None else None
    w, h, dead = fix_dead_columns(w0, hessian.to(dtype))
    static_fit = None
    if group_size is not None and static_groups:
        static_fit = stack_fits([fit(w[:, j : j + group_size]) for j in range(0, n_in, group_size)])
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    grids = _ColumnGrids(fit, group_size, row_fit, static_fit, perm, n_in)
    wt = w.T.contiguous()  # the loops run on Wᵀ [in, out] so that every column is a contiguous row
    solver = resolve_solver(solver, wt.device)
    if solver == "loop":
        r, _, damp_info = damped_factor(h, percdamp, _inverse_cholesky_upper)
        codes, q_all = _loop_solve(wt, r, grids, blocksize)
    else:
        (u, _), _, damp_info = damped_factor(h, percdamp, feedback_factor_or_none)
        codes, q_all = _blocked_solve(wt, u, grids, blocksize, inner, compiled=solver == "compiled")
    dynamic_fits = grids.dynamic_fits
    codes, q_all = codes.T, q_all.T

    group_index = None
    if static_fit is not None:
        fitted = static_fit
        group_index = torch.arange(n_in, device=w.device) // group_size  # type: ignore[operator]
    elif dynamic_fits:
        fitted = stack_fits(dynamic_fits)
        group_index = torch.arange(n_in, device=w.device) // group_size  # type: ignore[operator]
        if perm is not None:
            group_index = group_index[torch.argsort(perm)]
    else:
        fitted = row_fit  # type: ignore[assignment]
    if fitted.grid.scale.shape[1] == 1:
        group_index = None
    if perm is not None:
        inv = torch.argsort(perm)
        codes, q_all = codes[:, inv], q_all[:, inv]
    extras: dict[str, object] = {**damp_info, "dead_columns": int(dead.sum())}
    if perm is not None:
        extras["perm"] = perm
    if fitted.alpha is not None:
        extras["clip_alpha"] = fitted.alpha
    return make_weight_quant(weight, codes, q_all, fitted.grid, grid, bits, group_index, extras)
