"""Strata of the probe set (per-stratum probe vectors for the trace) and Lanczos from a subsample's warm start,
against the dense per-stratum Hessians from torch.func.hessian and their closed-form estimator variances."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.oracle import data, dense_hessian, mlp, operator, small_cnn
from losslab.landscape import ProbeSettings, hutch_plus_plus, hutchinson, lanczos_eigenvalues, run_probes


def off_diagonal_mass(h: torch.Tensor) -> float:
    """Σ_{i≠j} H_ij²: half the variance of one Rademacher sample vᵀHv (Hutchinson 1989)."""
    return float((h**2).sum() - (h.diagonal() ** 2).sum())


def test_batches_are_cut_at_stratum_boundaries() -> None:
    """Batches of 24 with strata of 16 samples: cut at 16, 32, ...; every sample kept once in order; products and
    loss unchanged (the dense Hessian)."""
    model, (x, y) = mlp(0), data(60, (4,))
    op = operator(model, x, y, size=24, stratum=16)
    assert [len(b) for _, b in op.batches] == [16, 8, 8, 16, 12]
    assert op.strata == [0, 1, 1, 2, 3]
    torch.testing.assert_close(torch.cat([b for _, b in op.batches]), y, rtol=0, atol=0)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.hvp(v), dense_hessian(model, x, y) @ v, rtol=1e-10, atol=1e-12)


def test_stratified_hutchinson_is_unbiased_with_the_closed_form_variance() -> None:
    """4 strata of 10 samples: the per-stratum-vector sample Σ_s w_s·v_sᵀH_s v_s has mean tr(H) and variance
    Σ_s w_s²·2·Σ_{i≠j}(H_s)_ij² (independent Rademacher vectors); 600 samples against both, and that variance is
    below plain Hutchinson's 2·Σ_{i≠j}H_ij² here, as the closed forms say."""
    model, (x, y) = mlp(1), data(40, (4,))
    h = dense_hessian(model, x, y)
    blocks = [dense_hessian(model, x[i : i + 10], y[i : i + 10]) for i in range(0, 40, 10)]
    want_var = sum((1 / 4) ** 2 * 2 * off_diagonal_mass(b) for b in blocks)
    plain_var = 2 * off_diagonal_mass(h)
    op = operator(model, x, y, size=20, stratum=10)
    est = hutchinson(op.hvp, op.dim, samples=600, seed=3, quadratic=op.stratified_quadratic)
    assert abs(est.trace - float(h.trace())) <= 3 * math.sqrt(want_var / 600)
    sample_var = est.stderr**2 * est.samples
    assert 0.8 <= sample_var / want_var <= 1.25
    assert want_var < plain_var
    assert est.matvecs == 600 and op.hvp_count == 600


def test_stratified_hutch_plus_plus_is_unbiased() -> None:
    """Hutch++ with per-stratum vectors on the deflated part: the mean over 40 seeds within 3 standard errors of
    the exact trace (small CNN with BatchNorm in eval mode, 3 strata)."""
    model, (x, y) = small_cnn(2), data(36, (1, 6, 6))
    exact = float(dense_hessian(model, x, y).trace())
    op = operator(model, x, y, size=36, stratum=12)
    runs = torch.tensor(
        [
            hutch_plus_plus(op.hvp, op.dim, rank=3, samples=4, seed=s, quadratic=op.stratified_quadratic).trace
            for s in range(40)
        ],
        dtype=torch.float64,
    )
    assert abs(float(runs.mean()) - exact) <= 3 * float(runs.std()) / math.sqrt(len(runs))


def test_stratified_trace_does_not_depend_on_the_batch_size() -> None:
    """Strata are cut by sample index: batch size 64 and 512 (with strata of 128) give the same trace to rounding."""
    model, (x, y) = mlp(1), data(512, (4,))
    settings = ProbeSettings(probes=("trace",), trace_samples=12, trace_stratum=128, seed=2)
    small = run_probes(operator(model, x, y, size=64, stratum=128), settings)
    big = run_probes(operator(model, x, y, size=512, stratum=128), settings)
    assert small["trace"] == pytest.approx(big["trace"], rel=1e-12)
    assert small["trace_stderr"] == pytest.approx(big["trace_stderr"], rel=1e-9)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_relation_residuals_equal_measured_ones(which: str) -> None:
    """|β_j·s_{j,i}| from the tridiagonal equals the measured ‖Hy − θy‖ (full reorthogonalization, float64)."""
    model, (x, y) = small_cnn(0), data(40, (1, 6, 6))
    op = operator(model, x, y)
    kw = {"k": 3, "which": which, "tol": 0.0, "max_steps": 12, "seed": 1}
    free = lanczos_eigenvalues(op.hvp, op.dim, measure=False, **kw)
    measured = lanczos_eigenvalues(op.hvp, op.dim, measure=True, **kw)
    assert free.values == measured.values
    torch.testing.assert_close(
        torch.tensor(free.residuals), torch.tensor(measured.residuals), rtol=1e-6, atol=1e-12 * abs(free.values[0])
    )


def test_value_criterion_meets_its_tolerance_with_fewer_steps() -> None:
    """The ``value`` rule stops when min(r, r²/δ) ≤ tol·max|θ|: its eigenvalues are within tol of the dense ones
    (float64), in no more steps than the residual rule at the same tol."""
    model, (x, y) = mlp(3, width=10), data(40, (4,))
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).flip(0)[:3]
    op = operator(model, x, y)
    for tol in (1e-3, 1e-6):
        value = lanczos_eigenvalues(op.hvp, op.dim, k=3, tol=tol, max_steps=op.dim, criterion="value")
        residual = lanczos_eigenvalues(op.hvp, op.dim, k=3, tol=tol, max_steps=op.dim)
        err = (torch.tensor(value.values, dtype=torch.float64) - exact).abs().max()
        assert float(err) <= tol * float(exact[0])
        assert value.steps <= residual.steps


def test_warm_start_from_an_eigenvector_converges_at_once() -> None:
    """Started on an exact eigenvector, Lanczos's first Ritz value is its eigenvalue, with residual ~0."""
    model, (x, y) = mlp(0), data(40, (4,))
    h = dense_hessian(model, x, y)
    lam, vec = torch.linalg.eigh(h)
    got = lanczos_eigenvalues(op := operator(model, x, y), op.dim, k=1, tol=1e-10, start=vec[:, -1], measure=False)
    assert got.steps == 1 and got.values[0] == pytest.approx(float(lam[-1]), rel=1e-12)
    assert got.residuals[0] <= 1e-10 * float(lam[-1])


def test_probe_eig_with_warm_start_matches_the_dense_spectrum() -> None:
    """Probe sets of at least 4×eig_warm samples start Lanczos from the first eig_warm samples' Hessian: the top-3
    (and the smallest 3) agree with the dense Hessian of the whole set to the asked tolerance; the warm stage's
    products are counted."""
    model, (x, y) = small_cnn(1), data(256, (1, 6, 6))
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    scale = float(exact.abs().max())
    settings = ProbeSettings(probes=("eig",), top_k=3, smallest=True, eig_tol=1e-8, eig_warm=64)
    op = operator(model, x, y, size=64)
    result = run_probes(op, settings)
    torch.testing.assert_close(
        torch.tensor(result["eigenvalues"], dtype=torch.float64), exact.flip(0)[:3], rtol=0, atol=1e-8 * scale
    )
    torch.testing.assert_close(
        torch.tensor(result["smallest_eigenvalues"], dtype=torch.float64), exact[:3], rtol=0, atol=1e-8 * scale
    )
    cold = run_probes(operator(model, x, y, size=64), ProbeSettings(probes=("eig",), eig_tol=1e-8, eig_warm=0))
    assert op.hvp_count > result["lanczos_steps"] + result["smallest_steps"]  # the warm stages' products
    assert cold["eigenvalues"] == pytest.approx(result["eigenvalues"], rel=1e-7)
