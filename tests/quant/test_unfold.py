"""Unfolding conv inputs reproduces F.conv2d exactly (real stride, padding, padding mode, dilation, groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losslab.quant.unfold import grouped_weight, layer_inputs, legacy_gpfq_patches, unfold_conv_input


def _conv_via_rows(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    rows = layer_inputs(conv, x)  # [groups, B·L, d]
    w = grouped_weight(conv)  # [groups, C_out/groups, d]
    out = torch.einsum("gmd,god->mgo", rows, w).reshape(rows.shape[1], -1)  # [B·L, C_out]
    if conv.bias is not None:
        out = out + conv.bias
    ref = conv(x)
    return out.reshape(x.shape[0], ref.shape[2], ref.shape[3], -1).permute(0, 3, 1, 2), ref


@pytest.mark.parametrize(
    "kw",
    [
        {"stride": 1, "padding": 0},
        {"stride": 2, "padding": 1},
        {"stride": 1, "padding": 1, "dilation": 2},
        {"stride": 1, "padding": 1, "groups": 2},
        {"stride": 2, "padding": 1, "padding_mode": "reflect"},
        {"stride": 1, "padding": 2, "padding_mode": "circular", "dilation": 2, "groups": 2},
        {"stride": 1, "padding": "same", "dilation": 2},
    ],
)
def test_rows_reproduce_conv2d(kw: dict) -> None:
    conv = nn.Conv2d(4, 6, 3, **kw).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    out, ref = _conv_via_rows(conv, x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_linear_rows_are_samples() -> None:
    lin = nn.Linear(5, 3)
    x = torch.randn(2, 7, 5)
    rows = layer_inputs(lin, x)
    assert rows.shape == (1, 14, 5)
    torch.testing.assert_close(rows[0] @ lin.weight.T + lin.bias, lin(x).reshape(14, 3))


def test_legacy_unfold_uses_kernel_stride_and_shared_indices() -> None:
    conv = nn.Conv2d(3, 4, 3, stride=1, padding=1)
    x = torch.randn(2, 3, 6, 6)
    gen = torch.Generator().manual_seed(0)
    px, pt = legacy_gpfq_patches(conv, x, 2 * x, gen)
    full = unfold_conv_input(conv, x, stride=(3, 3))  # 2x2 = 4 positions per image
    n_pick = int(0.25 * 4 + 1)
    assert px.shape == (1, 2 * n_pick, 27)
    torch.testing.assert_close(pt, 2 * px)  # same indices in both streams
    # every sampled patch is one of the image's non-overlapping patches
    for i in range(2):
        for j in range(n_pick):
            patch = px[0, i * n_pick + j]
            assert any(torch.equal(patch, full[0, i * 4 + k]) for k in range(4))
