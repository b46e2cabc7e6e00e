"""Unfolding conv inputs reproduces F.conv2d exactly (real stride, padding, padding mode, dilation, groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losslab.quant.unfold import (
    grouped_weight,
    layer_inputs,
    legacy_gpfq_patches,
    unfold_conv_input,
    unfold_conv_pair,
)


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


@pytest.mark.parametrize(
    "kw",
    [
        {"stride": 1, "padding": 1},
        {"stride": 2, "padding": 1, "groups": 2},
        {"stride": 1, "padding": 2, "dilation": 2, "padding_mode": "circular"},
    ],
)
def test_strided_layouts_and_the_paired_buffer_match_f_unfold(kw: dict) -> None:
    """Rows equal F.unfold's patches (on the conv's own padding) for contiguous, channels-last and sliced inputs; the
    paired buffer holds exactly the two inputs' transposed rows, X̃ᵀ above Xᵀ, in one contiguous [groups, 2d, m]."""
    conv = nn.Conv2d(4, 6, 3, **kw).double()
    big = torch.randn(3, 5, 9, 10, dtype=torch.float64)
    inputs = [big[:, :4].contiguous(), big[:, :4].contiguous(memory_format=torch.channels_last), big[1:, 1:]]
    groups, d = conv.groups, 4 // conv.groups * 9
    for x in inputs:
        pad = conv._reversed_padding_repeated_twice
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        ref = torch.nn.functional.unfold(
            torch.nn.functional.pad(x, pad, mode=mode), 3, dilation=conv.dilation, stride=conv.stride
        )  # [B, C·9, L], channel-major columns
        ref = ref.permute(0, 2, 1).reshape(-1, groups, d).transpose(0, 1)  # [groups, B·L, d]
        assert torch.equal(unfold_conv_input(conv, x), ref)
    x, x_tilde = inputs[1], 2 * inputs[0] + 1
    pair = unfold_conv_pair(conv, x_tilde, x, dtype=torch.float64)
    assert pair.is_contiguous() and pair.shape == (groups, 2 * d, unfold_conv_input(conv, x).shape[1])
    assert torch.equal(pair[:, :d], unfold_conv_input(conv, x_tilde).transpose(1, 2))
    assert torch.equal(pair[:, d:], unfold_conv_input(conv, x).transpose(1, 2))
