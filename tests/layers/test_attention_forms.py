"""Attention SI per form (QK only / OV only), the QR-based product SVD, and the per-head statistics
(factorized.md §6), checked against float64 reference loops over explicitly sliced heads."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.layers import attention_modules, spectral_rebalance_attention
from losslab.layers.attention import _product_svd, attention_statistics


def perturbed_vit() -> VisionTransformer:
    """Float64 ViT (3 heads of size 4, d = 12) with every parameter, biases included, away from timm's init."""
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=3, num_classes=3)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def sliced_heads(attn: nn.Module) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(Q_h, K_h, V_h, O_h) per head by plain slicing: rows h·d_h:(h+1)·d_h of each third of qkv.weight,
    columns h·d_h:(h+1)·d_h of proj.weight."""
    w, p = attn.qkv.weight.detach().double(), attn.proj.weight.detach().double()
    d = w.shape[0] // 3
    d_h = d // attn.num_heads
    out = []
    for h in range(attn.num_heads):
        rows = slice(h * d_h, (h + 1) * d_h)
        out.append((w[:d][rows], w[d : 2 * d][rows], w[2 * d :][rows], p[:, rows]))
    return out


def test_product_svd_matches_the_full_svd() -> None:
    left, right = torch.randn(5, 9, 3, dtype=torch.float64), torch.randn(5, 3, 7, dtype=torch.float64)
    a, s, bh = _product_svd(left, right)
    product = torch.bmm(left, right)
    torch.testing.assert_close(torch.bmm(a * s[:, None, :], bh), product)
    torch.testing.assert_close(s, torch.linalg.svdvals(product)[:, :3])
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(torch.bmm(a.transpose(1, 2), a), eye)
    torch.testing.assert_close(torch.bmm(bh, bh.transpose(1, 2)), eye)


@pytest.mark.parametrize("form", ["qk", "ov"])
def test_one_form_rebalances_only_its_product(form: str) -> None:
    model = perturbed_vit()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before_out = model(x)
    before = [sliced_heads(a) for _, a in attention_modules(model)]
    before_bias = [a.qkv.bias.detach().clone().view(3, -1) for _, a in attention_modules(model)]
    spectral_rebalance_attention(model, qk=form == "qk", ov=form == "ov")
    assert ((model(x) - before_out).norm() / before_out.norm()).item() < 1e-5  # the §6 oracle
    for heads_before, bias_before, (_, attn) in zip(before, before_bias, attention_modules(model)):
        bias = attn.qkv.bias.detach().view(3, -1)
        for (q0, k0, v0, o0), (q, k, v, o) in zip(heads_before, sliced_heads(attn)):
            torch.testing.assert_close(q.T @ k, q0.T @ k0)
            torch.testing.assert_close(o @ v, o0 @ v0)
            if form == "qk":
                sigma = torch.linalg.svdvals(q0.T @ k0)[:4]
                torch.testing.assert_close(q @ q.T, torch.diag(sigma))
                torch.testing.assert_close(k @ k.T, torch.diag(sigma))
                assert torch.equal(v, v0) and torch.equal(o, o0)  # the OV form is left exactly as it was
            else:
                sigma = torch.linalg.svdvals(o0 @ v0)[:4]
                torch.testing.assert_close(o.T @ o, torch.diag(sigma))
                torch.testing.assert_close(v @ v.T, torch.diag(sigma))
                assert torch.equal(q, q0) and torch.equal(k, k0)
        untouched = [0, 1] if form == "ov" else [2]
        assert torch.equal(bias[untouched], bias_before[untouched])


def test_statistics_match_reference_loops_and_show_balance() -> None:
    model = perturbed_vit()
    heads = [h for _, a in attention_modules(model) for h in sliced_heads(a)]
    expected = {}
    for form, pairs in (("qk", [(q.T, k) for q, k, _, _ in heads]), ("ov", [(o, v) for _, _, v, o in heads])):
        products = [left @ right for left, right in pairs]
        expected[f"{form}_frob_norm"] = sum(torch.linalg.matrix_norm(p).item() for p in products) / len(heads)
        expected[f"{form}_nuclear_norm"] = sum(torch.linalg.matrix_norm(p, "nuc").item() for p in products) / len(heads)
        expected[f"{form}_factor_sq_norm"] = sum(
            0.5 * (left.pow(2).sum() + right.pow(2).sum()).item() for left, right in pairs
        ) / len(heads)
    stats = attention_statistics(model)
    assert stats == pytest.approx(expected, rel=1e-10)
    # A random init is unbalanced: ½(‖Q‖² + ‖K‖²) exceeds ‖QᵀK‖_*; the rebalance closes the gap, norms unchanged.
    assert stats["qk_factor_sq_norm"] > 1.1 * stats["qk_nuclear_norm"]
    assert stats["ov_factor_sq_norm"] > 1.1 * stats["ov_nuclear_norm"]
    spectral_rebalance_attention(model)
    after = attention_statistics(model)
    for form in ("qk", "ov"):
        assert after[f"{form}_factor_sq_norm"] == pytest.approx(after[f"{form}_nuclear_norm"], rel=1e-10)
        assert after[f"{form}_frob_norm"] == pytest.approx(stats[f"{form}_frob_norm"], rel=1e-10)
    assert attention_statistics(nn.Linear(3, 3)) == {}


def test_rebalance_needs_a_form() -> None:
    with pytest.raises(ConfigError, match="qk=True or ov=True"):
        spectral_rebalance_attention(perturbed_vit(), qk=False, ov=False)
