"""Eigenvalues and spectral density of a symmetric operator given only by matrix-vector products.

    eig = lanczos_eigenvalues(op.hvp, op.dim, k=3, seed=0)      # top-3 (or which="smallest") with residuals
    dens = spectral_density(op.hvp, op.dim, starts=8, steps=40)  # stochastic Lanczos quadrature

:func:`lanczos_eigenvalues`: Lanczos (Golub & Van Loan §10.1) with full reorthogonalization (classical Gram-Schmidt
twice against the stored basis), seeded Gaussian start. After each step the Ritz values θ_i of the tridiagonal T_j
come with the residual bound |β_j·s_{j,i}| = ‖Hy_i − θ_i·y_i‖ (exact under full reorthogonalization); it stops
when the k wanted ones are below ``tol``·max|θ|. A breakdown (β ≈ 0: an invariant subspace) restarts from a new
random vector orthogonal to the basis, so multiple and isolated eigenvalues are found too. The returned residuals
are ‖Hy − θy‖: measured with one extra product per eigenvalue (``measure=True``), or the Lanczos relation's
|β_j·s_{j,i}|, equal to it up to rounding under full reorthogonalization, for free.

Two stopping rules. ``criterion="residual"``: every wanted residual ≤ ``tol``·max|θ| (ARPACK's). ``"value"``: every
wanted eigenvalue's estimated error ≤ ``tol``·max|θ|, the estimate being min(r, r²/δ) with r the residual and δ the
distance from θ to the nearest other Ritz value or ``hints`` entry (|λ − θ| ≤ r always; ≈ r²/gap once the
neighbouring eigenvalue is separated, as in the Kato–Temple bound), so an eigenvalue accurate to 1e-3 needs a
residual of about √(1e-3·gap·λ), not 1e-3·λ. ``start`` replaces the random start vector: the top Ritz vectors of
the Hessian of a subsample (:meth:`~losslab.landscape.operator.HessianOperator.head`) make a start that is already
close, and their next Ritz values are the ``hints``.

:func:`spectral_density`: SLQ (Lin, Saad & Yang 2016; Ghorbani et al. 2019). For each of ``starts`` Rademacher
vectors v, m Lanczos steps from v/‖v‖ give nodes θ_j (eigenvalues of T_m) and weights τ_j = (first component of
T_m's j-th eigenvector)²; Σ_j τ_j f(θ_j) is the Gauss quadrature of vᵀf(H)v/‖v‖², exact for polynomials of degree
≤ 2m−1, whose mean over v is tr f(H)/P. The density is Σ τ_j·N(t; θ_j, σ²) averaged over starts; the moments
tr(H^p)/P come with their standard error over the starts. Only three vectors are kept per start (no m × P
store) unless ``reorthogonalize=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from losslab.errors import check_range
from losslab.landscape.trace import seeded_generator

MatVec = Callable[[Tensor], Tensor]

__all__ = ["Eigen", "lanczos_eigenvalues", "spectral_density", "tridiagonal"]


@dataclass
class Eigen:
    """Eigenvalues (descending for ``largest``, ascending for ``smallest``), their residuals ‖Hv − λv‖, the
    eigenvectors (rows, flat), the number of Lanczos steps and the next ``others`` Ritz values (same order)."""

    values: list[float]
    residuals: list[float]
    vectors: Tensor
    steps: int
    others: list[float] = field(default_factory=list)


def tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    """The symmetric tridiagonal T (float64) with diagonal ``alphas`` and off-diagonal ``betas``."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _random_unit(dim: int, gen: torch.Generator, like: Tensor | None, dtype: torch.dtype, device: Any) -> Tensor:
    v = torch.randn(dim, generator=gen, dtype=dtype, device=device)
    return v / v.norm()


def lanczos_eigenvalues(
    matvec: MatVec,
    dim: int,
    k: int = 3,
    which: str = "largest",
    tol: float = 1e-6,
    max_steps: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    history: list[list[float]] | None = None,
    criterion: str = "residual",
    start: Tensor | None = None,
    hints: list[float] | None = None,
    measure: bool = True,
    others: int = 0,
) -> Eigen:
    """The ``k`` algebraically largest (or smallest) eigenvalues of the symmetric operator ``matvec`` of size ``dim``.

    Stops when every wanted Ritz pair meets ``criterion`` at ``tol`` (module docstring), after ``max_steps`` steps,
    or when the Krylov space is the whole space. ``history``, if given, receives the wanted Ritz values of each
    step. ``start``: the first Lanczos vector (default: seeded Gaussian); ``hints``: other eigenvalue estimates for
    the gaps of ``"value"``; ``measure``: residuals measured (k products) or from the Lanczos relation (free);
    ``others``: how many further Ritz values (beyond the k) to return in ``Eigen.others``.
    """
    check_range("k", k, low=1)
    if which not in ("largest", "smallest"):
        raise ValueError(f"which={which!r}: choose largest or smallest")
    if criterion not in ("residual", "value"):
        raise ValueError(f"criterion={criterion!r}: choose residual or value")
    device = torch.device(device)
    k = min(k, dim)
    gen = seeded_generator(seed, device)
    basis = torch.empty(min(max_steps, dim) + 1, dim, dtype=dtype, device=device)
    basis[0] = _random_unit(dim, gen, None, dtype, device) if start is None else start.to(dtype) / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    steps = min(max_steps, dim)
    for j in range(steps):
        w = matvec(basis[j]).to(dtype)
        alpha = float(w @ basis[j])
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalization, twice is enough (Kahan/Parlett)
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
        pick = _wanted(theta, k, which)
        if history is not None:
            history.append([float(theta[i]) for i in pick])
        scale = max(float(theta.abs().max()), 1e-300)
        bounds = [abs(beta * float(s[-1, i])) for i in pick]
        if criterion == "value":
            bounds = [_value_error(r, float(theta[i]), theta, i, hints) for r, i in zip(bounds, pick)]
        if len(alphas) >= k and all(b <= tol * scale for b in bounds):
            break
        if j + 1 == steps:
            break
        if beta <= 1e-12 * scale:  # invariant subspace: continue from a fresh direction orthogonal to the basis
            w = torch.randn(dim, generator=gen, dtype=dtype, device=device)
            for _ in range(2):
                w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta_next, w = 0.0, w / w.norm()
        else:
            beta_next, w = beta, w / beta
        betas.append(beta_next)
        basis[j + 1] = w
    n = len(alphas)
    vectors = (s[:, pick].T.to(dtype) @ basis[:n]) if pick else basis[:0]
    values = [float(theta[i]) for i in pick]
    if measure:
        residuals = [float((matvec(v).to(dtype) - lam * v).norm()) for lam, v in zip(values, vectors)]
    else:
        residuals = [abs(beta * float(s[-1, i])) for i in pick]
    rest = [float(theta[i]) for i in _wanted(theta, k + others, which)[len(pick) :]]
    return Eigen(values=values, residuals=residuals, vectors=vectors, steps=n, others=rest)


def _value_error(r: float, value: float, theta: Tensor, index: int, hints: list[float] | None) -> float:
    """min(r, r²/δ): the error estimate of the Ritz value ``value`` with residual ``r``, δ the distance to the nearest
    other Ritz value or hint (r alone when there is none)."""
    near = [abs(value - float(t)) for j, t in enumerate(theta) if j != index] + [abs(value - h) for h in hints or []]
    near = [d for d in near if d > 0]
    return min(r, r * r / min(near)) if near else r


def _wanted(theta: Tensor, k: int, which: str) -> list[int]:
    """Indices of the ``k`` largest (descending) or smallest (ascending) of ``theta`` (ascending from eigh)."""
    n = len(theta)
    k = min(k, n)
    return list(range(n - 1, n - 1 - k, -1)) if which == "largest" else list(range(k))


@dataclass
class Density:
    """SLQ result: nodes/weights per start, the smoothed density on ``grid``, moments tr(H^p)/P and their stderr."""

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float
    moments: list[float]
    moment_stderr: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "sigma": self.sigma,
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "moments": self.moments,
            "moment_stderr": self.moment_stderr,
        }


def lanczos_tridiagonal(
    matvec: MatVec, start: Tensor, steps: int, reorthogonalize: bool = False
) -> tuple[list[float], list[float]]:
    """(α, β) of ``steps`` Lanczos steps from ``start`` (normalized here); three-term recurrence only, unless
    ``reorthogonalize`` (then the basis is stored). Stops early on a breakdown."""
    v = start / start.norm()
    prev = torch.zeros_like(v)
    basis = [v] if reorthogonalize else []
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for j in range(steps):
        w = matvec(v).to(v.dtype) - beta * prev
        alpha = float(w @ v)
        alphas.append(alpha)
        w -= alpha * v
        if reorthogonalize:
            stack = torch.stack(basis)
            for _ in range(2):
                w -= stack.T @ (stack @ w)
        beta = float(w.norm())
        if j + 1 == steps or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        prev, v = v, w / beta
        if reorthogonalize:
            basis.append(v)
    return alphas, betas


def spectral_density(
    matvec: MatVec,
    dim: int,
    starts: int = 8,
    steps: int = 40,
    seed: int = 0,
    grid_points: int = 512,
    sigma: float | None = None,
    reorthogonalize: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    progress: Callable[[], None] | None = None,
) -> Density:
    """SLQ spectral density and moments p = 1..4 (module docstring). ``sigma`` defaults to 1 % of the node range."""
    check_range("starts", starts, low=1)
    check_range("steps", steps, low=1)
    gen = seeded_generator(seed, torch.device(device))
    all_nodes, all_weights = [], []
    for _ in range(starts):
        v = torch.randint(0, 2, (dim,), generator=gen, device=device).to(dtype).mul_(2).sub_(1)
        alphas, betas = lanczos_tridiagonal(matvec, v, min(steps, dim), reorthogonalize)
        theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
        pad = steps - len(alphas)  # an early breakdown: pad with zero-weight nodes so every start has m nodes
        all_nodes.append(torch.cat([theta, theta[-1:].repeat(pad)]))
        all_weights.append(torch.cat([s[0] ** 2, torch.zeros(pad, dtype=torch.float64)]))
        if progress is not None:
            progress()
    nodes, weights = torch.stack(all_nodes), torch.stack(all_weights)
    per_start = torch.stack([(weights * nodes**p).sum(1) for p in range(1, 5)], 1)  # [starts, 4]
    moments = per_start.mean(0)
    stderr = per_start.std(0) / math.sqrt(starts) if starts > 1 else torch.full((4,), float("nan"))
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sigma = sigma if sigma is not None else 0.01 * width
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / sigma) ** 2) / (
        sigma * math.sqrt(2 * math.pi)
    )
    density = (weights[..., None] * kernel).sum(1).mean(0)
    return Density(nodes, weights, grid, density, sigma, moments.tolist(), stderr.tolist())
