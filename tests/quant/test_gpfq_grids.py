"""GPFQ on the range grids (issue 20 §1): per channel or per group, min/max or MSE clip, plain or L1.

Oracles: with one column, or with X̃ = X and orthogonal columns (H̃ = H diagonal), GPFQ is round-to-nearest on the
same grid; a float64 sample-space loop written here from the definition (quantization spec §5.1 and the §2 grid
formulas) gives identical codes; a b-bit layer stores b bits per weight plus its scales (and zero points).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError
from losslab.quant import GPFQ
from losslab.quant.gpfq import (
    ROW_CHECK_RATIO,
    GPFQStats,
    add_pair_gram,
    gpfq_alphabet,
    gpfq_gram_codes,
    gpfq_weight,
    gpfq_weight_from_stats,
    gpfq_weight_sample_form,
    pair_block,
    stacked_transposes,
)
from losslab.quant.result import SCALE_BITS, storage_bits_total
from losslab.quant.rtn import rtn_weight

F64 = torch.float64
GRIDS = ("asym", "sym", "narrow")


def _pair(m: int, n: int = 24, d: int = 40, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=F64)
    xt = x + 0.1 * torch.randn(m, d, generator=g, dtype=F64)
    w = torch.randn(n, d, generator=g, dtype=F64)
    return w, x, xt


def _reference_grid(w: Tensor, bits: int, grid: str) -> tuple[Tensor, Tensor | None, int, int]:
    """(scale [rows], zero [rows] or None, qmin, qmax) of one row block, straight from quantization spec §2."""
    maxq = 2**bits - 1
    if grid == "asym":
        lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
        scale = (hi - lo) / maxq
        return scale, torch.round(-lo / scale), 0, maxq
    amax = w.abs().amax(1)
    half = 2 ** (bits - 1)
    if grid == "sym":
        return 2 * amax / maxq, None, -half, half - 1
    return amax / (half - 1), None, -(half - 1), half - 1


def _reference_gpfq(
    w: Tensor, x: Tensor, xt: Tensor, bits: int, grid: str, group: int | None, lam: float = 0.0
) -> Tensor:
    """GPFQ's sample-space loop in float64 (spec §5.1): u_0 = 0, q_t = 𝒬(⟨X̃_t, u + w_t·X_t⟩/‖X̃_t‖²),
    u ← u + w_t·X_t − q_t·X̃_t; 𝒬 = round half to even on the row's (group's) grid fitted on the original W,
    after the soft threshold sign(a)·max(|a| − λ, 0). Returns the codes."""
    n, d = w.shape
    g = group or d
    u = torch.zeros(n, x.shape[0], dtype=F64)
    codes = torch.empty(n, d, dtype=F64)
    for t in range(d):
        start = (t // g) * g
        scale, zero, qmin, qmax = _reference_grid(w[:, start : start + g], bits, grid)
        norm2 = xt[:, t] @ xt[:, t]
        arg = (u @ xt[:, t] + w[:, t] * (x[:, t] @ xt[:, t])) / norm2
        arg = torch.sign(arg) * (arg.abs() - lam).clamp_min(0)
        c = torch.round(arg / scale) + (0 if zero is None else zero)
        c = c.clamp(qmin, qmax)
        codes[:, t] = c
        q = scale * (c - (0 if zero is None else zero))
        u = u + torch.outer(w[:, t], x[:, t]) - torch.outer(q, xt[:, t])
    return codes


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("group", [None, 8, 12])
def test_codes_equal_a_float64_reference_loop(grid: str, group: int | None) -> None:
    w, x, xt = _pair(300)
    want = _reference_gpfq(w, x, xt, 3, grid, group)
    for wq in (
        gpfq_weight(w, x, xt, bits=3, grid=grid, group_size=group),
        gpfq_weight(w, x, xt, bits=3, grid=grid, group_size=group, solver="loop", blocksize=7),
        gpfq_weight_sample_form(w, x, xt, bits=3, grid=grid, group_size=group),
    ):
        assert torch.equal(wq.codes.to(F64), want)
        assert wq.storage_bits == 3 and wq.grid == grid


@pytest.mark.parametrize(
    ("grid", "group"), [("asym", None), ("sym", 8), ("narrow", None), ("asym", 12), ("gpfq", None)]
)
def test_rounding_rows_step_is_the_generic_step_bit_for_bit_in_float32(grid: str, group: int | None) -> None:
    """The plain-rounding step (preallocated rows, per-group row grids) against the generic step, which replays the
    recursion with the fast path's codes forced in: identical arguments bit for bit in float32 (a dead column
    included), and each code is the alphabet's rounding of its argument."""
    w, x, xt = (t.float() for t in _pair(300, n=32, d=40, seed=5))
    xt[:, 7] = 0  # a dead column: H̃_tt = 0 keeps its argument at 0
    stats = GPFQStats(40, dtype=torch.float32, solve_only=True)
    stats.update(x, xt)
    gram = stats.finalize()
    alphabet = gpfq_alphabet(w, 3, grid=grid, group_size=group)
    codes, args = gpfq_gram_codes(w, gram, alphabet, inner=6)
    _, forced_args = gpfq_gram_codes(w, gram, alphabet, inner=6, forced_codes=codes)
    assert torch.equal(args, forced_args) and not args[:, 7].any()
    assert torch.equal(codes, alphabet.encode(args))


@pytest.mark.parametrize("grid", GRIDS)
def test_l1_codes_equal_the_reference_loop(grid: str) -> None:
    w, x, xt = _pair(200)
    want = _reference_gpfq(w, x, xt, 3, grid, 10, lam=0.3)
    wq = gpfq_weight(w, x, xt, bits=3, grid=grid, group_size=10, sparsity="l1", lam=0.3)
    assert torch.equal(wq.codes.to(F64), want)
    assert (wq.q == 0).double().mean() > (
        gpfq_weight(w, x, xt, bits=3, grid=grid, group_size=10).q == 0
    ).double().mean()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("clip", ["max", "mse"])
@pytest.mark.parametrize("group", [None, 4])
def test_one_column_and_orthogonal_columns_equal_rtn(grid: str, clip: str, group: int | None) -> None:
    w = torch.randn(16, 1, dtype=F64)
    # one column: the argument is ‖X‖²·w/‖X‖²; a power-of-two ‖X‖² keeps it exactly w (each row's only weight is
    # its range end, a rounding tie on sym grids, so a last-bit difference would decide the tie)
    x = torch.full((64, 1), 0.5, dtype=F64)
    got = gpfq_weight(w, x, bits=3, grid=grid, clip=clip)
    assert torch.equal(got.codes, rtn_weight(w, 3, grid=grid, clip=clip).codes)
    x = torch.zeros(30, 24, dtype=F64)  # X̃ = X with orthogonal columns: H̃ = H = XᵀX diagonal (powers of 4, exact)
    x[torch.arange(24), torch.arange(24)] = 2.0 ** (torch.arange(24) % 3 - 1).to(F64)
    w = torch.randn(16, 24, dtype=F64)
    got = gpfq_weight(w, x, bits=3, grid=grid, clip=clip, group_size=group)
    want = rtn_weight(w, 3, grid=grid, clip=clip, group_size=group)
    assert torch.equal(got.codes, want.codes) and torch.equal(got.q, want.q)


def test_fp32_fast_path_matches_float64_up_to_rare_flips() -> None:
    w, x, xt = _pair(400, n=64, d=64)
    ref = gpfq_weight(w, x, xt, bits=4, grid="asym")
    fast_stats = GPFQStats(64, dtype=torch.float32, solve_only=True)
    fast_stats.update(x.float(), xt.float())
    fast = gpfq_weight_from_stats(w.float(), fast_stats, 4, grid="asym")
    assert fast_stats.xx is None and "relative_error" not in fast.extras
    assert (fast.codes != ref.codes).double().mean() < 0.01  # a flip only within rounding error of a half step


@pytest.mark.parametrize("grid", GRIDS)
def test_stored_bits_are_b_plus_scales(grid: str) -> None:
    w, x, xt = _pair(100, n=8, d=32)
    for group in (None, 8):
        wq = gpfq_weight(w, x, xt, bits=4, grid=grid, group_size=group)
        n_groups = 1 if group is None else 4
        zero_bits = 4 if grid == "asym" else 0
        want = 8 * 32 * 4 + 8 * n_groups * (SCALE_BITS + zero_bits)
        want += 0 if group is None else 32 * math.ceil(math.log2(n_groups))
        assert storage_bits_total(wq) == want
    seed = gpfq_weight(w, x, xt, bits=4, grid="gpfq")
    assert seed.storage_bits == 5 and seed.levels == 17


def test_method_grid_options_and_dtypes() -> None:
    assert GPFQ(bits=4).grid == "asym"
    fast, seed = GPFQ(bits=4).new_stats(8, torch.device("cpu")), GPFQ(bits=4, grid="gpfq").new_stats(8, "cpu")
    assert (fast.stats.dtype, fast.stats.xx) == (torch.float32, None)
    assert seed.stats.dtype == F64 and seed.stats.xx is not None
    with pytest.raises(ConfigError, match="sparsity='l0' is defined on the seed alphabet"):
        GPFQ(bits=3, sparsity="l0", lam=0.1)
    with pytest.raises(ConfigError, match="scalar/quantile"):
        GPFQ(bits=3, scalar=2.0)
    with pytest.raises(ConfigError, match="legacy_alphabet=True is the seed's alphabet"):
        GPFQ(bits=3, legacy_alphabet=True)
    with pytest.raises(ConfigError, match="one scale per layer"):
        GPFQ(bits=3, grid="gpfq", group_size=64)
    with pytest.raises(ConfigError, match="grid"):
        GPFQ(bits=3, grid="quip")


@pytest.mark.parametrize("grid", GRIDS)
def test_stochastic_rounding_on_a_range_grid_gram_equals_sample_form(grid: str) -> None:
    w, x, xt = _pair(200)
    kw = {"bits": 3, "grid": grid, "group_size": 10, "stochastic": True}
    gram = gpfq_weight(w, x, xt, generator=torch.Generator().manual_seed(3), **kw)
    sample = gpfq_weight_sample_form(w, x, xt, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(gram.codes, sample.codes)  # same draws, same arguments in float64
    nearest = gpfq_weight(w, x, xt, bits=3, grid=grid, group_size=10)
    assert not torch.equal(gram.codes, nearest.codes)


@pytest.mark.parametrize("d", [40, 300])
def test_solve_only_stats_hold_the_lower_triangles_and_give_the_same_codes(d: int) -> None:
    """Two batches of 250 rows: at d = 40 through the scratch product (reused, overwritten), at d = 300 straight into
    the accumulator (250 < ROW_CHECK_RATIO·d); both against the float64 definitions X̃ᵀX and X̃ᵀX̃."""
    assert (ROW_CHECK_RATIO * d > 250) == (d == 300)
    w, x, xt = _pair(500, n=16, d=d)
    full, lower = GPFQStats(d), GPFQStats(d, solve_only=True)
    for rows in range(0, 500, 250):
        full.update(x[rows : rows + 250], xt[rows : rows + 250])
        lower.update(x[rows : rows + 250], xt[rows : rows + 250])
    first = GPFQStats(d, solve_only=True)
    first.update(x)  # X̃ = X: one product for both
    want = (xt.T @ x, xt.T @ xt)
    for got, ref in zip((lower.g, lower.h_tilde), want, strict=True):
        torch.testing.assert_close(torch.tril(got), torch.tril(ref), rtol=1e-12, atol=1e-9)
        assert got.count_nonzero() < d * d or d <= 128  # strict upper blocks skipped once there are two blocks
    torch.testing.assert_close(torch.tril(first.g), torch.tril(x.T @ x), rtol=1e-12, atol=1e-9)
    assert torch.equal(first.g, first.h_tilde) and lower.xx is None
    a = gpfq_weight_from_stats(w, full, 3, grid="asym", group_size=32)
    b = gpfq_weight_from_stats(w, lower, 3, grid="asym", group_size=32)
    assert torch.equal(a.codes, b.codes) and "relative_error" in a.extras and "relative_error" not in b.extras


@pytest.mark.parametrize("d", [40, 144, 300, 700])
def test_pair_gram_fills_both_block_triangles_in_one_product_per_block(d: int) -> None:
    """add_pair_gram against the definitions X̃ᵀX̃ and X̃ᵀX (float64): acc[:d] holds X̃ᵀX̃ on and below the block
    diagonal, acc[d:]ᵀ holds X̃ᵀX there; nothing is written outside those blocks; blocks are 16·j columns."""
    _, x, xt = _pair(60, d=d)
    acc = torch.zeros(2 * d, d, dtype=F64)
    add_pair_gram(acc, torch.cat([xt.T, x.T]), d)
    h_tilde, g = acc[:d], acc[d:].T
    block = pair_block(d)
    blocks = torch.arange(d) // block
    written = blocks[:, None] >= blocks[None, :]  # on or below the block diagonal
    for got, want in ((h_tilde, xt.T @ xt), (g, xt.T @ x)):
        torch.testing.assert_close(got[written], want[written], rtol=1e-12, atol=1e-10)
        assert not got[~written].any()
    assert block % 16 == 0 and not written.all()


def test_stacked_transposes_is_a_view_of_an_adjacent_pair_and_a_copy_otherwise() -> None:
    _, x, xt = _pair(30, d=12)
    buffer = torch.cat([xt.T, x.T])  # [2d, m]: X̃ᵀ then Xᵀ, contiguous
    view = stacked_transposes(buffer[:12].T, buffer[12:].T)
    assert view.data_ptr() == buffer.data_ptr() and torch.equal(view, buffer)
    copy = stacked_transposes(xt, x)  # separate row-major tensors: concatenated
    assert copy.data_ptr() != xt.data_ptr() and torch.equal(copy, buffer)
    swapped = stacked_transposes(buffer[12:].T, buffer[:12].T)  # X above X̃ in memory: not the pair's order
    assert torch.equal(swapped, torch.cat([x.T, xt.T]))


@pytest.mark.parametrize("rows", [64, 40])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fast_statistics_refuse_nonfinite_batches_from_the_gram_diagonal(bad: float, rows: int) -> None:
    """The solve-only path checks each batch through its Gram diagonals (64 rows ≥ ROW_CHECK_RATIO·d: the scratch
    product) or by one pass over the rows (40 < 3·16: straight into the accumulator): a NaN/±inf in X, in X̃ or in
    X̃ = X is refused with its count, before the accumulators change; a finite batch whose products overflow
    float32 passes update and its statistics are refused by the quantizer."""
    assert (rows < ROW_CHECK_RATIO * 16) == (rows == 40)
    _, x, xt = _pair(rows, d=16)
    x, xt = x.float(), xt.float()
    for which in ("x", "x_tilde", "same"):
        stats = GPFQStats(16, dtype=torch.float32, solve_only=True)
        stats.update(x, xt)
        before = (stats.g.clone(), stats.h_tilde.clone())
        poisoned = (xt if which == "x_tilde" else x).clone()
        poisoned[5, 3] = bad
        args = {"x": (poisoned, xt), "x_tilde": (x, poisoned), "same": (poisoned, None)}[which]
        name = "x_tilde" if which == "x_tilde" else "x"
        with pytest.raises(LosslabError, match=rf"GPFQStats.update: {name} holds 1 NaN/inf"):
            stats.update(*args)
        assert stats.count == rows and torch.equal(stats.g, before[0]) and torch.equal(stats.h_tilde, before[1])
    huge = GPFQStats(16, dtype=torch.float32, solve_only=True)
    huge.update(x * 1e20, xt)  # large but finite inputs whose products stay finite: accepted
    loud = GPFQStats(16, dtype=torch.float32, solve_only=True)
    loud.update(x, xt * 1e20)  # X̃ᵀX̃ overflows float32 although every input is finite
    with pytest.raises(LosslabError, match=r"H̃ = X̃ᵀX̃ holds .*NaN/inf"):
        gpfq_weight_from_stats(torch.randn(4, 16), loud, 3, grid="asym")
