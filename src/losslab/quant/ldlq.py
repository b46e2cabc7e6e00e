"""LDLQ (QuIP, Chee et al., NeurIPS 2023, arXiv:2307.13304): adaptive rounding with linear feedback from the LDL
factorization H = U·D·Uᵀ, U unit upper triangular (quantization spec §7).

In forward order, q_k = 𝒬(w_k + Σ_{j<k} (w_j − q_j)·U_jk). Since U = R⁻¹·diag(R) with H⁻¹ = RᵀR, the argument
equals GPTQ's error-updated column, so LDLQ ≡ GPTQ for the same order and grid without groups, and
tr((W − Q)H(W − Q)ᵀ) = Σ_k D_kk·‖arg_k − q_k‖² (the per-column terms are in ``extras``).

Orders: ``natural``; ``act`` (descending diag H, as GPTQ's act-order); ``ldlqRG`` (ascending diag H swept from the
end, i.e. largest first) followed by ``npasses`` greedy coordinate passes in code units
q_i ← clamp(round(q_i − (S·H)_i/H_ii)), S = Q − W, H scaled by its largest diagonal, stopping at a fixed point.
Dead columns and damping are handled as in GPTQ.

>>> import torch
>>> from losslab.quant.gptq import hessian_from_inputs
>>> h = hessian_from_inputs(torch.randn(256, 32))
>>> wq = ldlq_weight(torch.randn(8, 32), h, bits=3, grid="quip", order="ldlqRG", npasses=2)
>>> wq.levels
8
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from losslab.errors import ConfigError, unknown_name_error
from losslab.quant.blocked_solve import (
    DEFAULT_INNER,
    blocked_feedback,
    check_solver,
    feedback_factor,
    feedback_factor_or_none,
    resolve_solver,
    run_block,
)
from losslab.quant.gptq import check_hessian_args, damped_factor, fix_dead_columns
from losslab.quant.grids import UniformGrid, fit_grid, make_weight_quant, transposed_grid, work_dtype
from losslab.quant.weight_quant import WeightQuant

__all__ = ["LDLQ_ORDERS", "ldl_decompose", "ldlq_weight"]

LDLQ_ORDERS = ("natural", "act", "ldlqRG")


def ldl_decompose(hessian: Tensor) -> tuple[Tensor, Tensor]:
    """H = U·diag(D)·Uᵀ with U unit upper triangular: Cholesky of the index-reversed H, reversed back, each column
    divided by its diagonal. Raises ``torch.linalg.LinAlgError`` if H is not positive definite."""
    return feedback_factor(hessian)


def _column_order(diag_h: Tensor, order: str) -> Tensor | None:
    if order == "natural":
        return None
    if order == "act":
        return torch.argsort(diag_h, descending=True)
    return torch.argsort(diag_h, stable=True).flip(0)


def ldlq_weight(
    weight: Tensor,
    hessian: Tensor,
    bits: int = 4,
    grid: str = "asym",
    order: str = "natural",
    npasses: int = 0,
    percdamp: float = 0.01,
    clip: str = "max",
    *,
    mse_norm: float = 2.0,
    percentile: float = 99.9,
    scalar: float = 1.16,
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
) -> WeightQuant:
    """LDLQ-quantize ``weight`` ``[out, in]`` with Hessian ``[in, in]`` on a per-row (or per-tensor) grid.

    Args:
        weight, hessian: as for :func:`losslab.quant.gptq.gptq_weight`.
        bits: 2..8.
        grid: ``asym`` | ``sym`` | ``narrow`` | ``quip`` | ``gpfq`` (fitted on the original W).
        order: ``natural`` | ``act`` | ``ldlqRG``.
        npasses: greedy passes after the LDLQ sweep (``ldlqRG`` only).
        percdamp: damping fraction of mean(diag H).
        clip, mse_norm, percentile, scalar: grid fitting options.
        solver: ``auto`` (= ``blocked``) | ``blocked``: two-level blocked feedback (sweep and greedy passes) |
            ``compiled``: the sweep's inner blocks as compiled kernels on CUDA (``blocked`` elsewhere) |
            ``loop``: the per-column reference loops. Same codes in float64.
        inner: columns per inner block of the blocked solver.

    Returns:
        :class:`WeightQuant`; ``extras``: ``ldl_d`` (D in processing order), ``arg_residual_sq``
        (‖arg_k − q_k‖² per processed column), ``perm``, ``damp``, ``damp_retries``, ``passes_run``.
    """
    check_hessian_args(weight, hessian, bits, grid, percdamp)
    check_solver(solver, inner)
    if order not in LDLQ_ORDERS:
        raise ConfigError(str(unknown_name_error("order", order, LDLQ_ORDERS)))
    if npasses < 0 or (npasses > 0 and order != "ldlqRG"):
        raise ConfigError(f"npasses={npasses!r} is not allowed: use 0, or a positive count with order='ldlqRG'")
    dtype = work_dtype(weight)
    w0 = weight.to(dtype)
    fitted = fit_grid(w0, bits, grid, clip=clip, mse_norm=mse_norm, percentile=percentile, scalar=scalar)
    g = fitted.grid
    w, h, dead = fix_dead_columns(w0, hessian.to(dtype))
    perm = _column_order(torch.diagonal(h), order)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    (u, d), h_damped, damp_info = damped_factor(h, percdamp, feedback_factor_or_none)
    solver = resolve_solver(solver, w.device)
    solve = _loop_sweep if solver == "loop" else partial(_blocked_sweep, inner=inner, compiled=solver == "compiled")
    codes, args = solve(w, u, g)
    arg_res = (args - g.decode(codes)).pow(2).sum(0)  # ‖arg_k − q_k‖² per processed column
    greedy = _greedy_passes if solver == "loop" else partial(_blocked_greedy_passes, inner=inner)
    passes = greedy(codes, g.continuous(w), h_damped, g.qmin, g.qmax, npasses)
    q_all = g.decode(codes)
    if perm is not None:
        inv = torch.argsort(perm)
        codes, q_all = codes[:, inv], q_all[:, inv]
    extras: dict[str, object] = {
        **damp_info,
        "dead_columns": int(dead.sum()),
        "order": order,
        "ldl_d": d,
        "arg_residual_sq": arg_res,
        "passes_run": passes,
    }
    if perm is not None:
        extras["perm"] = perm
    return make_weight_quant(weight, codes, q_all, g, grid, bits, None, extras)


def _loop_sweep(w: Tensor, u: Tensor, g: UniformGrid) -> tuple[Tensor, Tensor]:
    """Reference LDLQ sweep, one column at a time: arg_k = w_k + (W − Q)[:, :k]·U[:k, k]. Returns (codes, args)."""
    n_in = w.shape[1]
    codes, args = torch.empty_like(w), torch.empty_like(w)
    err = torch.zeros_like(w)  # W − Q in processing order
    for k in range(n_in):
        arg = w[:, k : k + 1] + err[:, :k] @ u[:k, k : k + 1]
        c = g.encode(arg)
        codes[:, k : k + 1] = c
        args[:, k : k + 1] = arg
        err[:, k : k + 1] = w[:, k : k + 1] - g.decode(c)
    return codes, args


def _blocked_sweep(w: Tensor, u: Tensor, g: UniformGrid, inner: int, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """LDLQ sweep as the blocked feedback a_t = w_t + Σ_{s<t} U_st·(w_s − q_s) on Wᵀ (``compiled``: one compiled
    kernel per inner block, see :func:`losslab.quant.blocked_solve.run_block`). Returns (codes, args)."""
    wt = w.T.contiguous()  # [in, out]
    gt = transposed_grid(g)  # params [1, out]
    codes = torch.empty_like(wt)

    def step(t: int, a: Tensor, f: Tensor) -> None:  # a, f: [out]
        c = gt.encode(a[None], out=codes[t : t + 1])
        torch.sub(wt[t], gt.decode(c, out=f[None])[0], out=f)

    def block_step(b: int, e: int, a: Tensor, f: Tensor) -> None:  # a, f: [e - b, out]
        n_out = wt.shape[1]
        zero = gt.zero.expand(e - b, n_out) if isinstance(gt.zero, Tensor) else gt.zero
        scale = gt.scale.expand(e - b, n_out)
        out = run_block(a, u[b:e, b:e], wt[b:e], scale, zero, gt.qmin, gt.qmax, gt.half_up, gt.midrise)
        codes[b:e], _, f[:], a[:] = out

    args = wt.clone()
    blocked_feedback(args, u, step, inner=inner, block_step=block_step if compiled else None)
    return codes.T, args.T


def _blocked_greedy_passes(
    codes: Tensor, target: Tensor, hessian: Tensor, qmin: int, qmax: int, npasses: int, inner: int
) -> int:
    """:func:`_greedy_passes` with the blocked feedback: per pass R = H·Sᵀ once, then each code change Δ_i feeds
    R_j += H_ij·Δ_i forward (all columns j > i of the pass see it, as in the sequential sweep)."""
    if npasses == 0:
        return 0
    h = hessian / torch.diagonal(hessian).max()
    hdiag = torch.diagonal(h)
    ct = codes.T.contiguous()  # [in, out]
    tt = target.T
    for p in range(npasses):
        before = ct.clone()

        def step(i: int, a: Tensor, f: Tensor) -> None:  # a = (S·H)_i [out]; f = Δ_i
            new = torch.round(ct[i] - a / hdiag[i]).clamp_(qmin, qmax)
            torch.sub(new, ct[i], out=f)
            ct[i] = new

        blocked_feedback(h.T @ (ct - tt), h, step, inner=inner)  # (S·H)ᵀ = Hᵀ·Sᵀ [in, out]
        if torch.equal(ct, before):
            codes.copy_(ct.T)
            return p + 1
    codes.copy_(ct.T)
    return npasses


def _greedy_passes(codes: Tensor, target: Tensor, hessian: Tensor, qmin: int, qmax: int, npasses: int) -> int:
    """QuIP's greedy passes in code units, in place on ``codes``; returns the number of passes run.

    Each pass visits the columns in processing order: c_i ← clamp(round(c_i − (S·H)_i/H_ii), qmin, qmax) with
    S = C − target updated after every column; stops early when a pass changes nothing.
    """
    h = hessian / torch.diagonal(hessian).max()
    s = codes - target
    for p in range(npasses):
        changed = False
        for i in range(codes.shape[1]):
            new = torch.round(codes[:, i] - (s @ h[:, i]) / h[i, i]).clamp_(qmin, qmax)
            if not torch.equal(new, codes[:, i]):
                changed = True
                codes[:, i] = new
                s[:, i] = new - target[:, i]
        if not changed:
            return p + 1
    return npasses
