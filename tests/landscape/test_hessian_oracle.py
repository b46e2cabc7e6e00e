"""Hessian-vector products, Lanczos eigenvalues, per-layer blocks and SLQ moments against the dense Hessian."""

from __future__ import annotations

import pytest
import torch

from landscape.oracle import data, dense_hessian, mlp, operator, small_cnn
from losslab.landscape import ProbeSettings, lanczos_eigenvalues, run_probes, spectral_density

CASES = {
    "mlp": (lambda: mlp(0), (4,)),
    "mlp_wide": (lambda: mlp(3, width=10), (4,)),
    "cnn_bn": (small_cnn, (1, 6, 6)),
}


def case(name: str):
    build, shape = CASES[name]
    model = build()
    x, y = data(40, shape)
    return model, x, y


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("method", ["func", "double"])
def test_hvp_matches_dense_hessian(name: str, method: str) -> None:
    model, x, y = case(name)
    h = dense_hessian(model, x, y)
    op = operator(model, x, y, method=method)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(op.hvp(v), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_top3_and_smallest_eigenvalues(name: str) -> None:
    model, x, y = case(name)
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    op = operator(model, x, y)
    top = lanczos_eigenvalues(op.hvp, op.dim, k=3, tol=1e-10, max_steps=op.dim)
    low = lanczos_eigenvalues(op.hvp, op.dim, k=3, which="smallest", tol=1e-10, max_steps=op.dim)
    torch.testing.assert_close(torch.tensor(top.values, dtype=torch.float64), exact.flip(0)[:3], rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(low.values, dtype=torch.float64), exact[:3], rtol=1e-6, atol=1e-9)
    scale = float(exact.abs().max())
    assert max(top.residuals) < 1e-6 * scale and max(low.residuals) < 1e-6 * scale


def test_quadratic_loss_gives_its_eigenvalues_exactly() -> None:
    """L(θ) = ½·θᵀAθ with A = Q·diag(λ)·Qᵀ: the Hessian is A whatever θ and the data."""
    torch.manual_seed(0)
    dim = 30
    lam = torch.linspace(-2.0, 10.0, dim, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
    a = q @ torch.diag(lam) @ q.T

    class Quad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.theta = torch.nn.Parameter(torch.randn(dim, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * self.theta @ a @ self.theta + 0 * x.sum()

    from losslab.landscape import HessianOperator

    op = HessianOperator(Quad(), lambda out, y: out, [(torch.zeros(4, dtype=torch.float64), torch.zeros(4))])
    top = lanczos_eigenvalues(op.hvp, op.dim, k=3, tol=1e-12, max_steps=dim)
    low = lanczos_eigenvalues(op.hvp, op.dim, k=2, which="smallest", tol=1e-12, max_steps=dim)
    torch.testing.assert_close(torch.tensor(top.values, dtype=torch.float64), lam.flip(0)[:3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(low.values, dtype=torch.float64), lam[:2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_per_layer_traces_are_the_diagonal_blocks(name: str) -> None:
    model, x, y = case(name)
    op = operator(model, x, y)
    settings = ProbeSettings(probes=("layers",), layer_rank=10_000, eig_tol=1e-10, layer_steps=10_000)
    layers = run_probes(op, settings)["layers"]
    modules = {n.rpartition(".")[0] for n, _ in model.named_parameters()}
    assert set(layers) == modules
    for module, got in layers.items():
        names = [n for n, _ in model.named_parameters() if n.rpartition(".")[0] == module]
        block = dense_hessian(model, x, y, names)
        assert got["trace"] == pytest.approx(float(block.trace()), rel=1e-9, abs=1e-12)
        assert got["trace_per_param"] == pytest.approx(float(block.trace()) / block.shape[0], rel=1e-9, abs=1e-12)
        assert got["top_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_slq_moments_within_their_stated_error(name: str) -> None:
    model, x, y = case(name)
    h = dense_hessian(model, x, y)
    exact = [float(torch.linalg.matrix_power(h, p).trace()) / h.shape[0] for p in range(1, 5)]
    op = operator(model, x, y)
    dens = spectral_density(op.hvp, op.dim, starts=30, steps=12, seed=3)
    for p, (got, err, want) in enumerate(zip(dens.moments, dens.moment_stderr, exact), 1):
        assert abs(got - want) <= 3 * err, (p, got, want, err)
    # the smoothed density integrates to one (up to the grid's quadrature)
    step = float(dens.grid[1] - dens.grid[0])
    assert float(dens.density.sum()) * step == pytest.approx(1.0, abs=1e-3)


def test_slq_moments_are_exact_when_m_covers_the_space() -> None:
    """With m ≥ P steps and reorthogonalization the quadrature of each start is exact: the moment of one start is
    vᵀH^p v/P, checked against the dense Hessian with the same Rademacher vector."""
    model, x, y = case("mlp")
    h = dense_hessian(model, x, y)
    op = operator(model, x, y)
    dens = spectral_density(op.hvp, op.dim, starts=1, steps=op.dim, seed=7, reorthogonalize=True)
    v = torch.randint(0, 2, (op.dim,), generator=torch.Generator().manual_seed(7)).double().mul(2).sub(1)
    for p in range(1, 5):
        want = float(v @ torch.linalg.matrix_power(h, p) @ v) / op.dim
        assert float((dens.weights[0] * dens.nodes[0] ** p).sum()) == pytest.approx(want, rel=1e-8)


def test_same_seed_same_numbers_and_batch_size_invariance() -> None:
    model, x, y = mlp(1), *data(512, (4,))
    settings = ProbeSettings(probes=("eig", "trace"), trace_samples=20, seed=4)
    first = run_probes(operator(model, x, y, size=64), settings)
    again = run_probes(operator(model, x, y, size=64), settings)
    big = run_probes(operator(model, x, y, size=512), settings)
    for key in ("eigenvalues", "eigen_residuals", "trace", "trace_stderr"):
        assert first[key] == again[key]
    torch.testing.assert_close(
        torch.tensor(first["eigenvalues"], dtype=torch.float64),
        torch.tensor(big["eigenvalues"], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    assert first["trace"] == pytest.approx(big["trace"], rel=1e-12)


def test_unused_layer_contributes_zeros() -> None:
    model = mlp(2, unused=True)
    x, y = data(40, (4,))
    h = dense_hessian(model, x, y)
    for method in ("func", "double"):
        op = operator(model, x, y, method=method)
        assert "unused.weight" in op.names
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        hv = op.hvp(v)
        torch.testing.assert_close(hv, h @ v, rtol=1e-10, atol=1e-12)
        assert hv[-6:].abs().max() == 0  # unused.weight (2x2) and unused.bias (2) come last
    result = run_probes(operator(model, x, y), ProbeSettings(probes=("eig", "layers"), trace_samples=5))
    assert result["layers"]["unused"]["trace"] == 0.0


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_kept_graph_products_match_dense_hessian(name: str, share: float) -> None:
    """Double backward with the first-order graphs kept (budget: all the bytes they need), dropped midway (half:
    past the budget at the second of three batches) or never kept (0): every product, first and later, is the
    dense H·v."""
    model, x, y = case(name)
    h = dense_hessian(model, x, y)
    probe = operator(model, x, y, method="double", graph_budget=2**30)
    probe.hvp(torch.zeros(probe.dim, dtype=torch.float64))
    op = operator(model, x, y, method="double", graph_budget=int(share * probe.graph.bytes))
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(op.hvp(v), h @ v, rtol=1e-10, atol=1e-12)
    assert (op.graph.batch(0) is not None) == (share == 1.0)


def test_auto_keeps_double_backward_when_the_graph_fits() -> None:
    """``auto`` stays on double backward once its graphs are kept; with no budget it times both ways. Either way
    the first and later products are the dense H·v."""
    model, x, y = case("cnn_bn")
    h = dense_hessian(model, x, y)
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kept, unkept = operator(model, x, y), operator(model, x, y, graph_budget=0)
    for op in (kept, unkept):
        for _ in range(2):
            torch.testing.assert_close(op.hvp(v), h @ v, rtol=1e-10, atol=1e-12)
    assert kept.method == "double" and kept.graph.batch(0) is not None
    assert unkept.method in ("func", "double") and unkept.graph.batch(0) is None


def test_kept_graph_is_rebuilt_when_the_parameters_change() -> None:
    """After set_theta the kept graph is stale: the next product is the dense Hessian at the new θ, and the
    restricted block (sharing the kept graph) is the new Hessian's diagonal block."""
    model, x, y = case("cnn_bn")
    op = operator(model, x, y, method="double")
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op.hvp(v)
    assert op.graph.batch(0) is not None
    op.set_theta(op.theta() * 1.3)
    torch.testing.assert_close(op.hvp(v), dense_hessian(model, x, y) @ v, rtol=1e-10, atol=1e-12)
    names = ["conv.weight", "conv.bias"]
    sub = op.restricted(names)
    u = torch.randn(sub.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(sub.hvp(u), dense_hessian(model, x, y, names) @ u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [0, 2**30])
def test_kept_graph_batch_size_invariance(budget: int) -> None:
    """Batch size 64 and 512 give the same products (kept graphs or recomputed), equal to the dense H·v."""
    model, (x, y) = small_cnn(1), data(512, (1, 6, 6))
    h = dense_hessian(model, x, y)
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    small = operator(model, x, y, size=64, method="double", graph_budget=budget)
    big = operator(model, x, y, size=512, method="double", graph_budget=budget)
    for _ in range(2):
        torch.testing.assert_close(small.hvp(v), big.hvp(v), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(small.hvp(v), h @ v, rtol=1e-10, atol=1e-12)
