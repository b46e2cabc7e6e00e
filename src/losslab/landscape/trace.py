"""Trace of a symmetric operator from matrix-vector products: Hutchinson and Hutch++, with standard errors.

    est = hutchinson(op.hvp, op.dim, samples=100, seed=0)         # mean of vᵀHv, v Rademacher
    est = hutch_plus_plus(op.hvp, op.dim, rank=10, samples=100)   # Meyer, Musco, Musco & Woodruff (SOSA 2021)

Hutchinson: tr(H) ≈ (1/n)·Σ vᵢᵀHvᵢ with Rademacher vᵢ (unbiased; Var = 2·Σ_{i≠j} H_ij² per sample), standard error
std/√n over the samples. Hutch++: Q = orth(H·S) for a Rademacher S with ``rank`` columns; tr(H) = tr(QᵀHQ) +
tr((I−QQᵀ)H(I−QQᵀ)), the first exact, the second by Hutchinson on the deflated operator, whose standard error is the
estimator's (conditional on Q; Hutch++ is unbiased because each part is). Deflating the few dominant eigenvalues
of a network Hessian removes most of the variance. Sampling stops early once the standard error is at most
``tol``·|estimate| (the absolute value, so a negative trace stops too), after ``min_samples``.

``quadratic`` replaces the sample vᵀHv by any unbiased one from fresh vectors: for a Hessian that is a weighted sum
over strata of the probe set, :meth:`~losslab.landscape.operator.HessianOperator.stratified_quadratic` draws one
vector per stratum (Σ_s w_s·v_sᵀH_s v_s) for the same cost and a variance about 1/strata as large when the strata's
Hessians are alike (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from losslab.errors import check_range

MatVec = Callable[[Tensor], Tensor]
#: One unbiased sample of tr(P·H·P) from fresh vectors: ``quadratic(draw, project)`` with ``draw()`` a Rademacher
#: vector and ``project`` the symmetric P (the identity for plain Hutchinson).
Quadratic = Callable[[Callable[[], Tensor], Callable[[Tensor], Tensor]], float]

__all__ = ["TraceEstimate", "hutch_plus_plus", "hutchinson"]


@dataclass
class TraceEstimate:
    """The estimate, its standard error, the number of random samples and of matrix-vector products."""

    trace: float
    stderr: float
    samples: int
    matvecs: int


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: the probe vectors of every estimator come from one."""
    return torch.Generator(device=device).manual_seed(seed)


def rademacher(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of independent ±1 entries."""
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype).mul_(2).sub_(1)


def _plain(matvec: MatVec) -> Quadratic:
    """The sample uᵀHu with u = project(draw()): Hutchinson's."""

    def quadratic(draw: Callable[[], Tensor], project: Callable[[Tensor], Tensor]) -> float:
        u = project(draw())
        return float(u @ matvec(u).to(u.dtype))

    return quadratic


def _sampled(
    quad: Quadratic,
    project: Callable[[Tensor], Tensor],
    dim: int,
    gen: torch.Generator,
    samples: int,
    tol: float | None,
    min_samples: int,
    offset: float,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[float, float, int]:
    """(offset + mean, stderr, n) of quad(draw, project) over Rademacher draws, stopping when stderr <=
    tol·|offset + mean|."""
    values: list[float] = []
    for _ in range(samples):
        values.append(quad(lambda: rademacher((dim,), gen, dtype, device), project))
        n = len(values)
        if tol is not None and n >= max(min_samples, 2):
            mean, err = _mean_stderr(values)
            if err <= tol * abs(offset + mean):
                break
    mean, err = _mean_stderr(values)
    return offset + mean, err, len(values)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")


def hutchinson(
    matvec: MatVec,
    dim: int,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    min_samples: int = 10,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    quadratic: Quadratic | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with at most ``samples`` products (module docstring; ``quadratic``: the
    sample, default vᵀHv)."""
    check_range("samples", samples, low=1)
    device = torch.device(device)
    gen = seeded_generator(seed, device)
    quad = quadratic or _plain(matvec)
    trace, err, n = _sampled(quad, lambda v: v, dim, gen, samples, tol, min_samples, 0.0, dtype, device)
    return TraceEstimate(trace, err, n, n)


def hutch_plus_plus(
    matvec: MatVec,
    dim: int,
    rank: int = 10,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    min_samples: int = 10,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    quadratic: Quadratic | None = None,
) -> TraceEstimate:
    """Hutch++ estimate of tr(H): exact on the span of H·S (``rank`` columns), Hutchinson on the rest (each sample
    from ``quadratic``, default vᵀHv, with the deflation as its projection).

    With ``rank`` ≥ ``dim`` the deflation covers the whole space and the trace is exact (stderr 0).
    """
    check_range("rank", rank, low=1)
    check_range("samples", samples, low=1)
    device = torch.device(device)
    gen = seeded_generator(seed, device)
    r = min(rank, dim)
    sketch = torch.stack([matvec(s).to(dtype) for s in rademacher((r, dim), gen, dtype, device)], 1)
    q, _ = torch.linalg.qr(sketch)  # [dim, r]
    exact = float(sum(float(q[:, i] @ matvec(q[:, i].contiguous()).to(dtype)) for i in range(r)))
    if r == dim:
        return TraceEstimate(exact, 0.0, 0, 2 * r)

    def deflate(v: Tensor) -> Tensor:
        return v - q @ (q.T @ v)

    quad = quadratic or _plain(matvec)
    trace, err, n = _sampled(quad, deflate, dim, gen, samples, tol, min_samples, exact, dtype, device)
    return TraceEstimate(trace, err, n, 2 * r + n)
