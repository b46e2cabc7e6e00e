"""GPTQ oracles (quantization spec §6, §11): diagonal H = RTN, block-size invariance, act-order on the grid,
proxy loss vs RTN over seeds, singular H damped, Hessian accumulation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.gptq import HessianStats, gptq_weight, hessian_from_inputs
from losslab.quant.layer_metrics import proxy_loss
from losslab.quant.rtn import rtn_weight

F64 = torch.float64


def _problem(seed: int, out: int = 16, d: int = 32, m: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, d, generator=g, dtype=F64), hessian_from_inputs(torch.randn(m, d, generator=g, dtype=F64))


@pytest.mark.parametrize("grid", ["asym", "sym", "narrow"])
@pytest.mark.parametrize("group_size", [None, 8])
def test_diagonal_hessian_gives_rtn(grid: str, group_size: int | None) -> None:
    w = torch.randn(12, 32)
    h = torch.diag(torch.rand(32) + 0.5)
    # act-order regroups columns in processing order, so it only matches RTN without groups
    got = gptq_weight(w, h, 3, grid=grid, group_size=group_size, act_order=group_size is None)
    want = rtn_weight(w, 3, grid=grid, group_size=group_size)
    assert torch.equal(got.q, want.q)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [None, 8, 16])
def test_block_sizes_agree(act_order: bool, group_size: int | None) -> None:
    w, h = _problem(1, d=40)
    runs = [gptq_weight(w, h, 3, blocksize=b, act_order=act_order, group_size=group_size) for b in (1, 7, 128)]
    for r in runs[1:]:
        assert torch.equal(r.codes, runs[0].codes)


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_output_lies_on_the_grid(static_groups: bool) -> None:
    w, h = _problem(2, d=48)
    wq = gptq_weight(w, h, 3, act_order=True, group_size=16, static_groups=static_groups)
    assert wq.scale is not None and wq.zero is not None and wq.group_index is not None
    assert wq.scale.shape == (16, 3)
    assert torch.bincount(wq.group_index).tolist() == [16, 16, 16]
    s, z = wq.scale[:, wq.group_index], wq.zero[:, wq.group_index].double()
    codes = wq.q / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    assert codes.round().min() >= 0 and codes.round().max() <= 7
    assert torch.equal(wq.dequantize(), wq.q)
    if not static_groups:  # groups follow the permuted order: the first group holds the largest diag H
        top = torch.argsort(torch.diagonal(h), descending=True)[:16]
        assert (wq.group_index[top] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_bit_exact_low_precision(dtype: torch.dtype) -> None:
    w, h = _problem(3)
    wq = gptq_weight(w.to(dtype), h.float(), 4, group_size=8, act_order=True)
    assert wq.q.dtype == dtype and torch.equal(wq.dequantize(), wq.q)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Many tiny sequential problems: one intra-op thread avoids oversubscription on busy machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_proxy_loss_at_most_rtn_on_random_problems() -> None:
    for bits in (2, 3, 4):
        ratios = []
        for seed in range(100):
            w, h = _problem(seed)
            ratios.append(proxy_loss(w, gptq_weight(w, h, bits).q, h) / proxy_loss(w, rtn_weight(w, bits).q, h))
        r = torch.tensor(ratios)
        assert (r <= 1).double().mean() >= 0.99
        assert r.mean() < 1


def test_singular_hessian_is_damped_not_fatal() -> None:
    x = torch.randn(5, 32, dtype=F64)  # rank 5 < 32
    h = hessian_from_inputs(x)
    w = torch.randn(8, 32, dtype=F64)
    wq = gptq_weight(w, h, 4, percdamp=0.0)
    assert wq.extras["damp_retries"] >= 1 and wq.extras["damp"] > 0
    assert torch.isfinite(wq.q).all()


def test_dead_columns_are_zeroed() -> None:
    x = torch.randn(64, 16, dtype=F64)
    x[:, 3] = 0
    wq = gptq_weight(torch.randn(4, 16, dtype=F64) + 1, hessian_from_inputs(x), 4)
    assert (wq.q[:, 3] == 0).all() and wq.extras["dead_columns"] == 1


def test_hessian_stats_running_mean_equals_batch() -> None:
    x = torch.randn(300, 10, dtype=F64)
    stats = HessianStats(10, dtype=F64)
    for chunk in x.split(64):
        stats.update(chunk)
    assert torch.allclose(stats.hessian, hessian_from_inputs(x), rtol=1e-12, atol=1e-12)
    assert torch.allclose(hessian_from_inputs(x), 2 / 300 * x.T @ x)


def test_bad_arguments_raise_before_work() -> None:
    w, h = _problem(0)
    with pytest.raises(ConfigError, match="bits"):
        gptq_weight(w, h, 9)
    with pytest.raises(ConfigError, match="group_size"):
        gptq_weight(w, h, 4, grid="quip", group_size=8)
    with pytest.raises(ConfigError, match="percdamp"):
        gptq_weight(w, h, 4, percdamp=-1)
    with pytest.raises(ValueError, match="hessian"):
        gptq_weight(w, h[:5, :5], 4)
