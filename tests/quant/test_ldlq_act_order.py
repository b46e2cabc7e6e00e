"""LDLQ with act-order (quantization spec §6 step 2, §7, §11): perm = argsort(diag H, descending), quantize the
permuted problem, undo with argsort(perm). Oracles: output on the grid, LDLQ = GPTQ under the same permutation,
diagonal H gives RTN; the ``LDLQ`` config's ``act_order`` spelling and the CLIs that pass it."""

from __future__ import annotations

import pytest
import torch

from losslab.cli.quantize import build_methods
from losslab.errors import ConfigError
from losslab.quant.gptq import HessianStats, gptq_weight, hessian_from_inputs
from losslab.quant.ldlq import ldlq_weight
from losslab.quant.methods import GPTQ, LDLQ
from losslab.quant.rtn import rtn_weight

F64 = torch.float64


def _problem(seed: int, out: int = 16, d: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian W and H = (2/m)XᵀX with columns of X scaled so that diag H is far from sorted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, d, generator=g, dtype=F64) * (0.2 + 3 * torch.rand(d, generator=g, dtype=F64))
    return torch.randn(out, d, generator=g, dtype=F64), hessian_from_inputs(x)


@pytest.mark.parametrize("grid", ["asym", "sym"])
def test_act_order_output_lies_on_the_grid(grid: str) -> None:
    w, h = _problem(0)
    wq = ldlq_weight(w, h, 3, grid=grid, order="act")
    assert wq.scale is not None and wq.scale.shape == (16, 1) and wq.group_index is None
    zero = wq.zero.double() if wq.zero is not None else 0.0
    codes = wq.q / wq.scale + zero
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    assert torch.equal(codes.round(), wq.codes.double())
    low, high = (0, 7) if grid == "asym" else (-4, 3)
    assert wq.codes.min() >= low and wq.codes.max() <= high
    assert torch.equal(wq.dequantize(), wq.q)
    # the columns really were processed in permuted order: un-permuted natural order gives other codes
    assert not torch.equal(wq.codes, ldlq_weight(w, h, 3, grid=grid).codes)


@pytest.mark.parametrize("grid", ["asym", "sym", "quip"])
def test_act_order_equals_gptq_act_order_under_the_same_permutation(grid: str) -> None:
    for seed in range(3):
        w, h = _problem(seed)
        h[5, :] = h[:, 5] = 0  # a dead column: fixed before the permutation in both
        a = ldlq_weight(w, h, 3, grid=grid, order="act")
        b = gptq_weight(w, h, 3, grid=grid, act_order=True)
        perm = torch.argsort(torch.diagonal(h).masked_fill(torch.diagonal(h) == 0, 1), descending=True)
        assert torch.equal(a.extras["perm"], perm) and torch.equal(b.extras["perm"], perm)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.q, b.q)
        if grid != "quip":  # the quip grid has no zero level (spec §11)
            assert (a.q[:, 5] == 0).all()


@pytest.mark.parametrize("grid", ["asym", "sym", "narrow"])
def test_act_order_with_a_diagonal_hessian_is_rtn(grid: str) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 32, generator=g)
    h = torch.diag(torch.rand(32, generator=g) + 0.5)  # distinct entries: a non-trivial permutation
    got = ldlq_weight(w, h, 3, grid=grid, order="act")
    assert not torch.equal(got.extras["perm"], torch.arange(32))
    want = rtn_weight(w, 3, grid=grid)
    assert torch.equal(got.q, want.q) and torch.equal(got.codes, want.codes)


def test_config_act_order_is_order_act_and_matches_gptq() -> None:
    assert LDLQ(bits=3, act_order=True) == LDLQ(bits=3, order="act")
    assert LDLQ(bits=3, order="act").act_order is True and LDLQ(bits=3).order == "natural"
    assert LDLQ(bits=3, act_order=True).describe() == "LDLQ(bits=3, order='act', act_order=True)"
    w, h = _problem(4)
    stats = HessianStats(48, dtype=F64)
    stats.hessian = h
    a = LDLQ(bits=3, act_order=True).quantize_layer(w, stats)
    b = GPTQ(bits=3, act_order=True).quantize_layer(w, stats)
    assert torch.equal(a.codes, b.codes)


def test_config_refuses_conflicting_orders_before_work() -> None:
    with pytest.raises(ConfigError, match="act_order=True conflicts with order='ldlqRG'"):
        LDLQ(bits=3, act_order=True, order="ldlqRG")
    with pytest.raises(ConfigError, match="npasses=2 is not allowed with order='act'"):
        LDLQ(bits=3, act_order=True, npasses=2)
    with pytest.raises(ConfigError, match="act_order"):
        LDLQ(bits=3, act_order="yes")


def test_quantize_cli_options_reach_ldlq() -> None:
    # `losslab quantize --method ldlq --method gptq --act-order` builds both with act-order
    ldlq, gptq = build_methods(("ldlq", "gptq"), [3], {"act_order": True})
    assert ldlq == LDLQ(bits=3, order="act") and gptq == GPTQ(bits=3, act_order=True)
    (plain,) = build_methods(("ldlq",), [3], {"act_order": False})
    assert plain.order == "natural"
