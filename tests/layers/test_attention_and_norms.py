"""Per-head attention FD and rebalance (factorized.md §6) and the normalization experiment (§8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from losslab.errors import ConfigError
from losslab.layers import AttentionFrobeniusDecay, attention_modules, factorize, spectral_rebalance_attention
from losslab.layers.attention import _head_blocks
from losslab.layers.factor_norms import factor_stats, lowrank_layers, product_frobenius_norms, rescale_to_norms
from losslab.layers.normalization import NormalizeToRecorded, RecordFrobNorms


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=3, num_classes=3, qkv_bias=True)


@pytest.mark.parametrize(("qk", "ov"), [(True, True), (True, False), (False, True)])
def test_grad_term_equals_autograd_of_penalty(qk: bool, ov: bool) -> None:
    model = tiny_vit().double()
    fd = AttentionFrobeniusDecay(0.3, qk=qk, ov=ov)
    fd.attach(model)
    params = [p for _, a in attention_modules(model) for p in (a.qkv.weight, a.proj.weight) if ov or p is a.qkv.weight]
    expected = torch.autograd.grad(fd.penalty(model), params)
    value = fd.grad_term(model)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(value, fd.penalty(model).detach())
    assert ov or all(a.proj.weight.grad is None for _, a in attention_modules(model))


def test_qk_penalty_and_gradient_formulas_per_head() -> None:
    model = tiny_vit().double()
    attn = attention_modules(model)[0][1]
    q, k, v, o = _head_blocks(attn, attn.qkv.weight.detach(), attn.proj.weight.detach())
    lam = 0.5
    expected = sum(0.5 * lam * (q[h].T @ k[h]).pow(2).sum() + 0.5 * lam * (o[h] @ v[h]).pow(2).sum() for h in range(3))
    fd = AttentionFrobeniusDecay(lam, side="loss")
    penalty, g_qkv, _ = fd._penalty_and_grads(attn)
    torch.testing.assert_close(penalty, expected)
    torch.testing.assert_close(g_qkv.view(3, 3, 4, 12)[0, 1], lam * (k[1] @ k[1].T) @ q[1])
    assert fd.grad_term(model) is None and fd.loss_term(model, penalty, 1) is not None
    assert [tuple(p.shape) for p in fd.no_weight_decay_params(model)][:2] == [(36, 12), (12, 12)]


def test_spectral_rebalance_oracle() -> None:
    model = tiny_vit().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases non-zero too
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    products = [
        (torch.bmm(q.transpose(1, 2), k), torch.bmm(o, v))
        for _, a in attention_modules(model)
        for q, k, v, o in [_head_blocks(a, a.qkv.weight.detach().clone(), a.proj.weight.detach().clone())]
    ]
    assert spectral_rebalance_attention(model) == 2
    assert ((model(x) - before).norm() / before.norm()).item() < 1e-5
    for (qk_before, ov_before), (_, attn) in zip(products, attention_modules(model)):
        q, k, v, o = _head_blocks(attn, attn.qkv.weight.detach(), attn.proj.weight.detach())
        torch.testing.assert_close(torch.bmm(q.transpose(1, 2), k), qk_before)
        torch.testing.assert_close(torch.bmm(o, v), ov_before)
        sigma = torch.linalg.svdvals(qk_before)[:, :4]
        torch.testing.assert_close(torch.bmm(q, q.transpose(1, 2)), torch.diag_embed(sigma))
        torch.testing.assert_close(torch.bmm(k, k.transpose(1, 2)), torch.diag_embed(sigma))
        sigma_ov = torch.linalg.svdvals(ov_before)[:, :4]
        torch.testing.assert_close(torch.bmm(v, v.transpose(1, 2)), torch.diag_embed(sigma_ov))


def test_attention_errors() -> None:
    with pytest.raises(ConfigError, match="no attention module"):
        AttentionFrobeniusDecay(1e-4).attach(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="qk=True or ov=True"):
        AttentionFrobeniusDecay(1e-4, qk=False, ov=False)
    with pytest.raises(ConfigError, match="q/k normalization"):
        spectral_rebalance_attention(
            VisionTransformer(img_size=8, patch_size=4, embed_dim=12, depth=1, num_heads=3, qk_norm=True)
        )


def small_factorized_net() -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    factorize(model, rank_scale=0.3)
    return model


def test_one_norm_step_hits_targets() -> None:
    layers = lowrank_layers(small_factorized_net())
    targets = torch.tensor([0.7, 3.5], dtype=torch.float64)
    rescale_to_norms(layers, targets)
    torch.testing.assert_close(product_frobenius_norms(layers), targets, atol=0, rtol=1e-6)


def test_factor_stats_on_spectral_init_is_balanced() -> None:
    model = small_factorized_net()
    stats = factor_stats(model, lr=0.1)
    layers = lowrank_layers(model)
    frob = product_frobenius_norms(layers)
    assert stats["frob_norm"] == pytest.approx(frob.mean().item(), rel=1e-9)
    assert stats["lr_over_frob_sq"] == pytest.approx((0.1 / frob**2).mean().item(), rel=1e-9)
    # SI factors are balanced: UᵀU = VᵀV diagonal, so ½(‖U‖²+‖V‖²) = ‖UVᵀ‖_* and the Gram off-diagonals vanish
    assert stats["factor_sq_norm"] == pytest.approx(stats["nuclear_norm"], rel=1e-5)
    assert stats["gram_offdiag_u"] < 1e-5 and stats["gram_offdiag_v"] < 1e-5


@pytest.mark.slow
def test_record_then_normalize_with_lightning(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self, weight_decay: float) -> None:
            super().__init__()
            self.net = small_factorized_net()
            self.weight_decay = weight_decay

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=self.weight_decay)

    data = TensorDataset(torch.randn(24, 3, 6, 6), torch.randint(0, 4, (24,)))
    path = tmp_path / "frobnorms.pt"
    kwargs = {"max_epochs": 2, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False, "accelerator": "cpu"}  # fmt: skip
    torch.manual_seed(1)
    pl.Trainer(callbacks=[RecordFrobNorms(path)], **kwargs).fit(Module(5e-3), DataLoader(data, batch_size=8))
    record = torch.load(path)
    assert record.shape == (2, 3, 2)

    seen: list[torch.Tensor] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
            seen.append(product_frobenius_norms(lowrank_layers(pl_module)))

    module = Module(0.0)
    pl.Trainer(callbacks=[NormalizeToRecorded(path), Probe()], **kwargs).fit(module, DataLoader(data, batch_size=8))
    torch.testing.assert_close(torch.stack(seen).view(2, 3, 2), record, atol=0, rtol=1e-6)

    with pytest.raises(ConfigError, match="iterations per epoch"):
        pl.Trainer(callbacks=[NormalizeToRecorded(path)], **kwargs).fit(Module(0.0), DataLoader(data, batch_size=6))
