"""RTN oracles: grid formula, groups, dithered baseline, bit-exact dequantize for every grid and dtype."""

from __future__ import annotations

import pytest
import torch

from losslab.quant.rtn import rtn_weight


@pytest.mark.parametrize("grid", ["asym", "sym", "narrow", "gpfq", "quip", "regulquant_uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dequantize_is_bit_exact(grid: str, dtype: torch.dtype) -> None:
    wq = rtn_weight(torch.randn(12, 70).to(dtype), 3, grid=grid, generator=torch.Generator().manual_seed(1))
    assert wq.q.dtype == dtype
    assert torch.equal(wq.dequantize(), wq.q)


@pytest.mark.parametrize("clip", ["max", "mse", "percentile"])
def test_groups_ragged_last_group(clip: str) -> None:
    w = torch.randn(5, 300)
    wq = rtn_weight(w, 4, group_size=128, clip=clip)
    assert wq.scale is not None and wq.scale.shape == (5, 3)
    assert wq.group_index is not None and wq.group_index.tolist() == [j // 128 for j in range(300)]
    assert torch.equal(wq.dequantize(), wq.q)
    # each group equals RTN of that slice alone
    alone = rtn_weight(w[:, 256:], 4, clip=clip)
    assert torch.equal(wq.q[:, 256:], alone.q)


def test_per_tensor_has_one_scale() -> None:
    wq = rtn_weight(torch.randn(7, 40), 4, grid="sym", per_tensor=True)
    assert wq.scale is not None and (wq.scale == wq.scale[0, 0]).all()


def test_gpfq_grid_levels_and_storage() -> None:
    wq = rtn_weight(torch.randn(8, 64), 4, grid="gpfq")
    assert (wq.levels, wq.storage_bits) == (17, 5)
    assert wq.codes.min() >= -8 and wq.codes.max() <= 8


def test_regulquant_dither_doubles_error_variance() -> None:
    w = (torch.rand(64, 4096, dtype=torch.float64) * 2 - 1) * 0.999
    w[:, 0] = 1.0
    dith = rtn_weight(w, 4, grid="regulquant_uniform", generator=torch.Generator().manual_seed(123))
    step = 2.0 / 15
    interior = w.abs() < 1 - step  # away from the clamped ends
    var = (dith.q - w)[interior].pow(2).mean().item()
    assert var == pytest.approx(step**2 / 6, rel=0.05)

    assert dith.levels == 16 and dith.lut is not None
