"""The shared column solve of GPTQ, LDLQ and GPFQ (Gram form): a two-level blocked error-feedback loop, plus the
input checks every per-layer quantizer runs first.

All three methods quantize the columns t = 0…n−1 of a weight in sequence, each from an *argument* that collects
feedback from the columns already done:

    a_t = B_t + Σ_{s<t} C_st · f_s,     (q_t, f_t) = step(t, a_t)

with rows of B, A, F of length ``out`` (the loop runs on transposed ``[n, out]`` arrays so that a column is a
contiguous row) and C strictly upper triangular ``[n, n]``. GPTQ and LDLQ use C = U (the unit upper LDL factor of
H, see :func:`feedback_factor`) and f_s = w_s − q_s; GPFQ uses C = H̃ and f_s = −q_s.

The sum is evaluated right-looking in two block levels, so no step touches more than one inner block row by row:

- inside an inner block of ``inner`` columns: after each step, A[t+1:e] += C[t, t+1:e] ⊗ f_t (one rank-1 kernel);
- after an inner block: A[e:i2] += C[b:e, e:i2]ᵀ·F[b:e] (small GEMM) for the rest of the outer block;
- after an outer block of ``blocksize`` columns: A[i2:] += C[i1:i2, i2:]ᵀ·F[i1:i2] (one large GEMM).

Every a_t is therefore complete when step t runs, in exact arithmetic the same sum as the per-column loops; only
the order of the floating-point additions differs (float64: the same codes; see docs/quant_algorithms.md).
``breaks`` forces an inner block to start at given columns and ``on_break(t, peek)`` is called there, where
``peek(end)`` returns the current arguments of columns t…end−1 (all feedback from columns < t applied): GPTQ fits
its per-group grids there. Nothing in the loop reads a value back to the host, so on CUDA it runs without syncs.

>>> import torch
>>> h = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
>>> u, d = feedback_factor(h)
>>> torch.allclose(u @ torch.diag(d) @ u.T, h)
True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, unknown_name_error

__all__ = [
    "DEFAULT_INNER",
    "SOLVERS",
    "BlockStep",
    "blocked_feedback",
    "check_finite",
    "check_gram_diagonal",
    "check_rows_input",
    "check_solver",
    "check_weight_matrix",
    "compiled_block",
    "feedback_block",
    "feedback_factor",
    "feedback_factor_or_none",
    "resolve_solver",
    "run_block",
]

DEFAULT_INNER = 16
SOLVERS = ("auto", "blocked", "compiled", "loop")

Step = Callable[[int, Tensor, Tensor], None]
"""``step(t, a_t, f_t)``: quantize the argument row ``a_t`` ``[out]`` and write the feedback row into ``f_t``."""
BlockStep = Callable[[int, int, Tensor, Tensor], None]
"""``block_step(b, e, A[b:e], F[b:e])``: a whole inner block, in-block feedback included (the compiled path)."""


def resolve_solver(solver: str, device: torch.device) -> str:
    """``auto`` → ``blocked``; ``compiled`` → ``blocked`` off CUDA (Inductor on the CPU needs a C++ compiler and
    its compile time exceeds the solve)."""
    if solver == "auto" or (solver == "compiled" and device.type != "cuda"):
        return "blocked"
    return solver


def check_solver(solver: str, inner: int) -> None:
    """Validate the column-solver options shared by GPTQ, LDLQ and GPFQ."""
    if solver not in SOLVERS:
        raise ConfigError(str(unknown_name_error("solver", solver, SOLVERS)))
    if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1:
        raise ConfigError(f"inner={inner!r} is not allowed: use a positive integer (columns per inner block, e.g. 16)")


def _memory_order(t: Tensor) -> Tensor:
    """``t`` with its dimensions permuted into memory order (a contiguous view when ``t`` is a dense permutation,
    such as the transposed conv patches of :func:`losslab.quant.unfold.unfold_conv_input`), else ``t``: a
    whole-tensor reduction then reads memory in order, and ``flatten`` does not copy."""
    order = sorted(range(t.ndim), key=lambda i: -t.stride(i))
    view = t.permute(order)
    return view if view.is_contiguous() else t


def check_finite(name: str, t: Tensor, what: str = "the model's weights") -> None:
    """Raise :class:`LosslabError` if ``t`` holds NaN or ±inf (one reduction, before any work)."""
    lo_hi = torch.stack(torch.aminmax(_memory_order(t.detach()).flatten())) if t.numel() else None  # NaN propagates
    if lo_hi is not None and not bool(torch.isfinite(lo_hi).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise LosslabError(
            f"{name} holds {bad} NaN/inf value(s) (shape {tuple(t.shape)}): nothing can be quantized from it; "
            f"check {what}"
        )


def check_weight_matrix(weight: Tensor, name: str = "weight") -> None:
    """Refuse anything but a finite floating-point ``[out, in]`` matrix (message names the argument and the fix)."""
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        got = type(weight).__name__ if not isinstance(weight, Tensor) else f"a {weight.dtype} tensor"
        raise LosslabError(f"{name} must be a floating-point tensor [out, in], got {got}; pass layer.weight.detach()")
    if weight.ndim != 2:
        raise LosslabError(
            f"{name} must be a 2-D matrix [out, in], got shape {tuple(weight.shape)}; "
            "flatten conv kernels with weight.flatten(1) (1-D biases and norms are not quantized)"
        )
    check_finite(name, weight)


def check_rows_input(name: str, x: Tensor, dim: int | None = None, finite: bool | None = None) -> None:
    """Refuse calibration inputs that are not a finite floating-point ``[rows, dim]`` matrix.

    ``finite=None`` checks the values only for CPU tensors: on an accelerator the check would stall the stream once
    per batch, and NaN/inf reach the accumulated statistic, which the quantizers check once before solving.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, Tensor) else f"a {x.dtype} tensor"
        raise LosslabError(f"{name} must be floating-point layer inputs [rows, in], got {got}; cast them with .float()")
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[rows, {dim}]" if dim is not None else "[rows, in]"
        raise LosslabError(
            f"{name} must have shape {want}, got {tuple(x.shape)}; reshape the layer inputs to x.reshape(-1, in)"
        )
    if finite or (finite is None and x.device.type == "cpu"):
        check_finite(name, x, "the calibration data (and the model's activations on it)")


def check_gram_diagonal(name: str, x: Tensor, diagonal: Tensor) -> None:
    """Refuse a CPU batch ``x`` with NaN/inf from a Gram product's diagonal instead of a pass over ``x``.

    diag_i = Σ_r x_ri·y_ri with y = x (or the paired stream, whose own check covers it) is NaN or ±inf whenever
    column i of x holds NaN or ±inf: x_ri² is +inf or NaN, x_ri·y_ri is ±inf or NaN (0·inf), and no sum turns
    those finite. A non-finite diagonal sends ``x`` to :func:`check_finite`, which names the count; if ``x`` is
    finite there (the products overflowed), the accumulated statistic is refused before solving instead.
    Accelerator tensors are not checked here (no per-batch sync).
    """
    if x.device.type == "cpu" and not bool(torch.isfinite(diagonal).all()):
        check_finite(name, x, "the calibration data (and the model's activations on it)")


def feedback_factor_or_none(hessian: Tensor) -> tuple[Tensor, Tensor] | None:
    """H = U·diag(D)·Uᵀ with U unit upper triangular, or ``None`` if H is not positive definite.

    One Cholesky factorization of the index-reversed H (J·H·J = L·Lᵀ, so H = M·Mᵀ with M = J·L·J upper); U = M
    with each column divided by its diagonal, D = diag(M)². U = R⁻¹·diag(R) for GPTQ's H⁻¹ = RᵀR, so neither H⁻¹
    nor R is ever formed.
    """
    chol, info = torch.linalg.cholesky_ex(hessian.flip(0, 1))
    if info.item() != 0:
        return None
    m = chol.flip(0, 1)  # upper triangular, H = M·Mᵀ
    diag = torch.diagonal(m).clone()  # a copy: m is divided in place
    return m.div_(diag), diag.pow(2)


def feedback_factor(hessian: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`feedback_factor_or_none` that raises ``torch.linalg.LinAlgError`` when H is not positive definite."""
    factor = feedback_factor_or_none(hessian)
    if factor is None:
        raise torch.linalg.LinAlgError("feedback_factor: the matrix is not positive definite")
    return factor


def _inner_bounds(i1: int, i2: int, inner: int, breaks: list[int]) -> list[tuple[int, int]]:
    """Inner blocks of at most ``inner`` columns covering [i1, i2), with a block starting at every break."""
    starts = sorted({*range(i1, i2, inner), *(b for b in breaks if i1 <= b < i2)})
    return list(zip(starts, [*starts[1:], i2], strict=True))


def blocked_feedback(
    args: Tensor,
    coupling: Tensor,
    step: Step,
    *,
    blocksize: int = 128,
    inner: int = DEFAULT_INNER,
    breaks: Iterable[int] = (),
    on_break: Callable[[int, Callable[[int], Tensor]], None] | None = None,
    block_step: BlockStep | None = None,
) -> Tensor:
    """Run the error-feedback recursion (module docstring) in place on ``args`` ``[n, out]`` (B in, A out).

    Args:
        args: B, one contiguous row per column in processing order; holds the final arguments a_t on return.
        coupling: C ``[n, n]``; only its strict upper triangle is read.
        step: ``step(t, a_t, f_t)`` quantizes row t and writes the feedback f_t ``[out]``.
        blocksize: columns per outer block (one large GEMM per block).
        inner: columns per inner block (rank-1 updates inside, small GEMMs between).
        breaks: columns at which an inner block must start (and ``on_break`` is called).
        on_break: ``on_break(t, peek)`` before step t for t in ``breaks``.
        block_step: if given, called once per inner block instead of ``step`` per column (it applies the in-block
            feedback itself, e.g. :func:`feedback_block` compiled into one kernel).

    Returns:
        F ``[n, out]``, the feedback rows.
    """
    n = args.shape[0]
    feedback = torch.empty_like(args)  # F [n, out]
    a_rows, f_rows, c_rows = args.unbind(0), feedback.unbind(0), coupling.unbind(0)  # views, made once
    break_list = sorted(set(breaks))
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        for b, e in _inner_bounds(i1, i2, inner, break_list):
            if on_break is not None and b in break_list:
                on_break(b, _peeker(args, coupling, feedback, i1, i2, b))
            if block_step is not None:
                block_step(b, e, args[b:e], feedback[b:e])
                e_loop = b  # no per-column steps
            else:
                e_loop = e
            for t in range(b, e_loop):
                step(t, a_rows[t], f_rows[t])
                if t + 1 < e:
                    args[t + 1 : e].addr_(c_rows[t][t + 1 : e], f_rows[t])
            if e < i2:  # rest of the outer block: [i2 - e, out] += [e - b, i2 - e]ᵀ·[e - b, out]
                args[e:i2].addmm_(coupling[b:e, e:i2].T, feedback[b:e])
        if i2 < n:  # columns after the outer block: [n - i2, out] += [i2 - i1, n - i2]ᵀ·[i2 - i1, out]
            args[i2:].addmm_(coupling[i1:i2, i2:].T, feedback[i1:i2])
    return feedback


def _peeker(args: Tensor, coupling: Tensor, feedback: Tensor, i1: int, i2: int, t: int) -> Callable[[int], Tensor]:
    """``peek(end)``: current arguments of columns t…end−1 at a break t (inner block start inside [i1, i2))."""

    def peek(end: int) -> Tensor:
        if end <= i2:
            return args[t:end]
        # rows past the outer block still miss the block's feedback from columns i1…t−1
        pending = torch.addmm(args[i2:end], coupling[i1:t, i2:end].T, feedback[i1:t])
        return torch.cat([args[t:i2], pending], 0)

    return peek


def feedback_block(
    a: Tensor,
    c: Tensor,
    w: Tensor,
    scale: Tensor,
    zero: Tensor | float | None,
    qmin: int,
    qmax: int,
    half_up: bool = False,
    midrise: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One inner block of the GPTQ/LDLQ feedback a_t += Σ_{s<t} C_st·(w_s − q_s) with a uniform grid, as straight-line
    code over ``b`` steps (every op is elementwise over the ``out`` rows, so Inductor fuses the block into one
    kernel). ``a``, ``w``, ``scale`` (and a tensor ``zero``): ``[b, out]``; ``c``: ``[b, b]``.
    Returns (codes, Q, F, final arguments), each ``[b, out]``; the arithmetic is that of ``UniformGrid``.
    """
    codes, qs, fs, args = [], [], [], []
    for t in range(a.shape[0]):
        at = a[t]
        for s in range(t):
            at = at + c[s, t] * fs[s]
        zt = zero[t] if isinstance(zero, Tensor) else zero
        y = at / scale[t]
        if midrise:
            code = torch.round(y + zt)  # type: ignore[operator]
        else:
            code = torch.floor(y + 0.5) if half_up else torch.round(y)
            if zt is not None:
                code = code + zt
        code = code.clamp(qmin, qmax)
        q = scale[t] * (code if zt is None else code - zt)
        codes.append(code)
        qs.append(q)
        fs.append(w[t] - q)
        args.append(at)
    return torch.stack(codes), torch.stack(qs), torch.stack(fs), torch.stack(args)


_COMPILED: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]] = {}


def compiled_block() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    """:func:`feedback_block` through ``torch.compile`` (one fused kernel per inner block on CUDA), made once per
    process; :func:`run_block` falls back to the eager function if compiling fails."""
    if "block" not in _COMPILED:
        _COMPILED["block"] = torch.compile(feedback_block, dynamic=False, fullgraph=True)
    return _COMPILED["block"]


def run_block(*args: object, **kwargs: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the compiled :func:`feedback_block`; on a compile error warn once and use the eager function from then on."""
    fn = _COMPILED.get("fallback") or compiled_block()
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if fn is feedback_block:
            raise
        warnings.warn(f"solver='compiled': torch.compile failed ({err}); using the eager block solve", stacklevel=2)
        _COMPILED["fallback"] = feedback_block
        return feedback_block(*args, **kwargs)
