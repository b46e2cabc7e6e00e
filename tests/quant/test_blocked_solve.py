"""The blocked column solve equals the per-column reference loops (solver="loop") of GPTQ, LDLQ and GPFQ.

float64: identical codes, and identical weights wherever the grid is fixed before the loop (per-row and static
grids). GPTQ's dynamic groups fit their grid on intermediate columns that the two solvers compute with different
rounding, so there the scales agree to a few ulps. float32: the documented flip rate (same codes on ≥ 99.9 %).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from losslab.errors import ConfigError
from losslab.quant.blocked_solve import blocked_feedback, feedback_factor
from losslab.quant.gpfq import GPFQStats, gpfq_weight, gpfq_weight_from_stats
from losslab.quant.gptq import gptq_weight, hessian_from_inputs
from losslab.quant.ldlq import ldlq_weight

FLIP_RATE_FP32 = 1e-3  # documented in docs/quant_algorithms.md


def _problem(dtype: torch.dtype, out: int = 48, n: int = 150, seed: int = 0, dead: bool = True) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n, dtype=dtype) + 0.2 * torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    x = torch.randn(3 * n, n, generator=g, dtype=dtype) @ mix
    x = x * torch.rand(n, generator=g, dtype=dtype).add(0.2)  # unequal column scales: act-order matters
    if dead:
        x[:, 7] = 0  # a dead column (H_jj = 0)
    return torch.randn(out, n, generator=g, dtype=dtype), hessian_from_inputs(x)


GPTQ_CASES = [
    {},
    {"grid": "sym", "act_order": True},
    {"grid": "narrow", "blocksize": 32},
    {"group_size": 32},
    {"group_size": 32, "act_order": True},
    {"group_size": 20, "act_order": True, "blocksize": 64},
    {"group_size": 50, "static_groups": True, "act_order": True},
    {"group_size": 24, "clip": "mse"},
    {"grid": "gpfq"},
    {"grid": "quip", "act_order": True},
]


@pytest.mark.parametrize("kw", GPTQ_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("inner", [5, 16])
def test_gptq_blocked_equals_loop_float64(kw: dict[str, object], inner: int) -> None:
    w, h = _problem(torch.float64)
    ref = gptq_weight(w, h, 3, solver="loop", **kw)  # type: ignore[arg-type]
    new = gptq_weight(w, h, 3, solver="blocked", inner=inner, **kw)  # type: ignore[arg-type]
    assert torch.equal(new.codes, ref.codes)
    assert new.extras["dead_columns"] == ref.extras["dead_columns"] == 1
    if kw.get("group_size") is not None and not kw.get("static_groups"):
        torch.testing.assert_close(new.q, ref.q, rtol=1e-13, atol=1e-14)  # grids fitted on intermediate columns
        torch.testing.assert_close(new.scale, ref.scale, rtol=1e-13, atol=0)
    else:
        assert torch.equal(new.q, ref.q)
        assert torch.equal(new.scale, ref.scale) if new.scale is not None else torch.equal(new.lut, ref.lut)


@pytest.mark.parametrize("kw", [{}, {"group_size": 32, "act_order": True}, {"grid": "sym"}])
def test_gptq_blocked_float32_flip_rate(kw: dict[str, object]) -> None:
    w, h = _problem(torch.float32, out=64, n=256, seed=3)
    ref = gptq_weight(w, h, 4, solver="loop", **kw)  # type: ignore[arg-type]
    new = gptq_weight(w, h, 4, **kw)  # type: ignore[arg-type]
    assert (new.codes != ref.codes).float().mean().item() <= FLIP_RATE_FP32


@pytest.mark.parametrize(
    ("order", "npasses", "grid"),
    [("natural", 0, "asym"), ("act", 0, "sym"), ("ldlqRG", 3, "quip"), ("ldlqRG", 2, "gpfq")],
)
def test_ldlq_blocked_equals_loop_float64(order: str, npasses: int, grid: str) -> None:
    w, h = _problem(torch.float64, seed=1)
    ref = ldlq_weight(w, h, 2, grid=grid, order=order, npasses=npasses, solver="loop")
    new = ldlq_weight(w, h, 2, grid=grid, order=order, npasses=npasses, inner=7)
    assert torch.equal(new.codes, ref.codes) and torch.equal(new.q, ref.q)
    assert new.extras["passes_run"] == ref.extras["passes_run"]
    torch.testing.assert_close(new.extras["arg_residual_sq"], ref.extras["arg_residual_sq"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kw", [{}, {"blocksize": 40}, {"sparsity": "l1", "lam": 0.05}, {"sparsity": "l0", "lam": 0.05}, {"quantile": 0.9}]
)
def test_gpfq_blocked_equals_loop_float64(kw: dict[str, object]) -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 120, generator=g, dtype=torch.float64)
    x = torch.randn(300, 120, generator=g, dtype=torch.float64)
    xt = x + 0.1 * torch.randn(300, 120, generator=g, dtype=torch.float64)
    xt[:, 3] = 0  # ‖X̃_t‖ = 0 → argument 0
    ref = gpfq_weight(w, x, xt, bits=3, solver="loop", **kw)  # type: ignore[arg-type]
    new = gpfq_weight(w, x, xt, bits=3, inner=6, **kw)  # type: ignore[arg-type]
    assert torch.equal(new.codes, ref.codes) and torch.equal(new.q, ref.q)


def test_gpfq_blocked_stochastic_same_draws() -> None:
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(16, 64, generator=g, dtype=torch.float64), torch.randn(200, 64, generator=g, dtype=torch.float64)
    stats = GPFQStats(64)
    stats.update(x)
    a = gpfq_weight_from_stats(w, stats, 3, stochastic=True, generator=torch.Generator().manual_seed(9), solver="loop")
    b = gpfq_weight_from_stats(w, stats, 3, stochastic=True, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.codes, b.codes)


def test_blocked_feedback_matches_dense_recursion() -> None:
    """Oracle: a_t = B_t + Σ_{s<t} C_st·f_s evaluated densely, with a nonlinear step f_t = round(a_t)."""
    g = torch.Generator().manual_seed(5)
    n, out = 37, 6
    base = torch.randn(n, out, generator=g, dtype=torch.float64) * 3
    coupling = torch.randn(n, n, generator=g, dtype=torch.float64)
    a_ref, f_ref = base.clone(), torch.zeros(n, out, dtype=torch.float64)
    for t in range(n):
        a_ref[t] = base[t] + torch.triu(coupling, 1)[:t, t] @ f_ref[:t]
        f_ref[t] = torch.round(a_ref[t])

    def step(t: int, a: Tensor, f: Tensor) -> None:
        torch.round(a, out=f)

    a = base.clone()
    f = blocked_feedback(a, coupling, step, blocksize=10, inner=4, breaks=[13, 22])
    torch.testing.assert_close(a, a_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(f, f_ref)


def test_feedback_factor_is_the_ldl_and_gptq_factor() -> None:
    _, h = _problem(torch.float64, dead=False)
    u, d = feedback_factor(h)
    assert torch.equal(torch.diagonal(u), torch.ones(h.shape[0], dtype=h.dtype))
    assert torch.equal(torch.tril(u, -1), torch.zeros_like(u))
    torch.testing.assert_close(u @ torch.diag(d) @ u.T, h, rtol=1e-10, atol=1e-10)
    r = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # GPTQ's H⁻¹ = RᵀR
    torch.testing.assert_close(u, torch.linalg.inv(r) * torch.diagonal(r), rtol=1e-9, atol=1e-9)


def test_solver_options_are_validated() -> None:
    w, h = _problem(torch.float64, out=4, n=8)
    with pytest.raises(ConfigError, match="solver"):
        gptq_weight(w, h, solver="fast")
    with pytest.raises(ConfigError, match="inner"):
        ldlq_weight(w, h, inner=0)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"grid": "sym", "act_order": True},
        {"group_size": 32, "act_order": True},
        {"group_size": 20, "static_groups": True},
    ],
)
def test_gptq_block_kernel_path_equals_loop(monkeypatch: pytest.MonkeyPatch, kw: dict[str, object]) -> None:
    """solver="compiled" runs feedback_block per inner block; here the eager function stands in for the kernel
    (the CPU resolves "compiled" to "blocked"), so the block code path itself is checked against the loop."""
    import losslab.quant.blocked_solve as bs
    import losslab.quant.gptq as gptq_mod
    import losslab.quant.ldlq as ldlq_mod

    monkeypatch.setitem(bs._COMPILED, "block", bs.feedback_block)
    monkeypatch.setattr(gptq_mod, "resolve_solver", lambda solver, device: solver)
    monkeypatch.setattr(ldlq_mod, "resolve_solver", lambda solver, device: solver)
    w, h = _problem(torch.float64, seed=6)
    ref = gptq_weight(w, h, 3, solver="loop", **kw)  # type: ignore[arg-type]
    new = gptq_weight(w, h, 3, solver="compiled", inner=8, **kw)  # type: ignore[arg-type]
    assert torch.equal(new.codes, ref.codes)
    torch.testing.assert_close(new.q, ref.q, rtol=1e-13, atol=1e-14)
    a = ldlq_weight(w, h, 2, grid="quip", solver="loop")
    b = ldlq_weight(w, h, 2, grid="quip", solver="compiled", inner=8)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.q, b.q)


def test_compiled_resolves_to_blocked_off_cuda() -> None:
    from losslab.quant.blocked_solve import resolve_solver

    assert resolve_solver("compiled", torch.device("cpu")) == "blocked"
    assert resolve_solver("auto", torch.device("cpu")) == "blocked"
    assert resolve_solver("compiled", torch.device("cuda")) == "compiled"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", ["blocked", "compiled"])
def test_cuda_solvers_agree_with_cpu_float64(solver: str) -> None:
    """CUDA float32 (blocked and compiled) vs the CPU float64 loop on a full-rank H: ≥ 99.9 % equal codes."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(256, 512, generator=g)
    x = torch.randn(4096, 512, generator=g).relu_()
    h = hessian_from_inputs(x)
    ref = gptq_weight(w.double(), h.double(), 4, group_size=128, act_order=True, solver="loop")
    new = gptq_weight(w.cuda(), h.cuda(), 4, group_size=128, act_order=True, solver=solver)
    assert (new.codes.cpu() == ref.codes).float().mean().item() >= 1 - FLIP_RATE_FP32
    ref = ldlq_weight(w.double(), h.double(), 4, solver="loop")
    new = ldlq_weight(w.cuda(), h.cuda(), 4, solver=solver)
    assert (new.codes.cpu() == ref.codes).float().mean().item() >= 1 - FLIP_RATE_FP32
